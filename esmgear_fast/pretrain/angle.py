"""Angle prediction (TorchDrug's ``AnglePrediction``, ESM-GearNet's ``angle`` config)."""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from . import _sampling as S
from ._base import PretrainTask, TaskOutput, head_dims, mlp


def angle_bins(pos_i, pos_j, pos_k, num_class: int = 8) -> torch.Tensor:
    """Bin of the angle ∠ijk (at j) over ``[0, π]`` in ``num_class`` equal bins (TorchDrug's float32
    ``atan2(|v1 × v2|, v1 · v2)`` and ``bucketize`` on ``arange(0, π, π / num_class)``)."""
    v1 = (pos_i - pos_j).float()
    v2 = (pos_k - pos_j).float()
    angle = torch.atan2(torch.linalg.cross(v1, v2).norm(dim=-1), (v1 * v2).sum(-1))
    boundary = torch.arange(0, math.pi, math.pi / num_class, device=angle.device)
    return torch.bucketize(angle, boundary, right=True) - 1


class AnglePrediction(PretrainTask):
    """Sample ``num_sample`` adjacent edge pairs ``(k->j, j->i)`` per protein, remove both edges, classify
    the angle ∠ijk into ``num_class`` bins from an MLP on ``[h_i ‖ h_j ‖ h_k]`` (cross entropy).

    Proteins without such a pair (fewer than 3 residues) are skipped and counted (``skipped_proteins``).
    ``pred``: ``[S, num_class]`` logits, ``target``: ``[S]`` bins.
    """

    name = "angle"
    selection_metric = "accuracy"
    selection_mode = "max"

    def __init__(self, model, num_sample: int = 512, num_class: int = 8, num_mlp_layer: int = 2,
                 fix_sequence_model: bool = True, crop_length=100, exclude_self_loops: bool = True):
        super().__init__(model, fix_sequence_model, crop_length)
        if num_sample < 1 or num_class < 1:
            raise ValueError(f"num_sample and num_class must be >= 1, got {num_sample}, {num_class}")
        self.num_sample = int(num_sample)
        self.num_class = int(num_class)
        self.exclude_self_loops = bool(exclude_self_loops)
        self.mlp = mlp(3 * model.output_dim, head_dims(model.output_dim, num_mlp_layer, num_class))

    def compute(self, batch) -> TaskOutput:
        batch = self.crop(batch)
        graph = self.build_graph(batch)
        a, b, _, skipped = S.sample_edge_pairs(graph, batch.batch, batch.num_proteins, self.num_sample,
                                               self.exclude_self_loops)
        a, b = a.reshape(-1), b.reshape(-1)
        ei = graph["edge_index"]
        node_k, node_j, node_i = ei[0, a], ei[0, b], ei[1, b]
        target = angle_bins(batch.pos[node_i], batch.pos[node_j], batch.pos[node_k], self.num_class)
        node = self.encode(batch, graph=S.remove_edges(graph, torch.cat([a, b])))["node_feature"]
        pred = self.mlp(torch.cat([node[node_i], node[node_j], node[node_k]], dim=-1).float())
        loss = F.cross_entropy(pred, target)
        acc = (pred.detach().argmax(-1) == target).float().mean()
        return TaskOutput(loss=loss, pred=pred.detach(), target=target,
                          logs={"ce": loss.detach(), "accuracy": acc, "skipped_proteins": torch.tensor(float(skipped))})

    def evaluate(self, preds, targets):
        return {"accuracy": self.accuracy(preds, targets), "ce": float(F.cross_entropy(preds.float(), targets))}
