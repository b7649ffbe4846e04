"""Dihedral prediction (TorchDrug's ``DihedralPrediction``, ESM-GearNet's ``dihedral`` config)."""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from . import _sampling as S
from ._base import PretrainTask, TaskOutput, head_dims, mlp


def dihedral_bins(pos_i, pos_j, pos_t, pos_k, num_class: int = 8) -> torch.Tensor:
    """Bin of the (unsigned) dihedral of the path ``k - t - j - i`` over ``[0, π]`` in ``num_class`` bins:
    the angle between the normals ``(x_t - x_j) × (x_i - x_j)`` and ``(x_t - x_j) × (x_k - x_t)``, as
    TorchDrug (float32 ``atan2(|n1 × n2|, n1 · n2)``, ``bucketize`` on ``arange(0, π, π / num_class)``)."""
    v_ctr = (pos_t - pos_j).float()
    v1 = (pos_i - pos_j).float()
    v2 = (pos_k - pos_t).float()
    n1 = torch.linalg.cross(v_ctr, v1)
    n2 = torch.linalg.cross(v_ctr, v2)
    angle = torch.atan2(torch.linalg.cross(n1, n2).norm(dim=-1), (n1 * n2).sum(-1))
    boundary = torch.arange(0, math.pi, math.pi / num_class, device=angle.device)
    return torch.bucketize(angle, boundary, right=True) - 1


class DihedralPrediction(PretrainTask):
    """Sample ``num_sample`` three-edge paths ``(k->t, t->j, j->i)`` per protein, remove the three edges,
    classify the dihedral into ``num_class`` bins from an MLP on ``[h_i ‖ h_j ‖ h_k ‖ h_t]`` (cross entropy;
    TorchDrug's feature order). Proteins of fewer than 4 residues are skipped (counted in the logs
    as ``skipped_proteins``); as in TorchDrug a path may close a triangle (``k == i``, dihedral 0).
    ``pred``: ``[S, num_class]`` logits, ``target``: ``[S]`` bins.
    """

    name = "dihedral"
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
        self.mlp = mlp(4 * model.output_dim, head_dims(model.output_dim, num_mlp_layer, num_class))

    def compute(self, batch) -> TaskOutput:
        batch = self.crop(batch)
        graph = self.build_graph(batch)
        a, b, c, _, skipped = S.sample_edge_paths(graph, batch.batch, batch.num_proteins, self.num_sample,
                                                  self.exclude_self_loops, min_residues=4)
        a, b, c = a.reshape(-1), b.reshape(-1), c.reshape(-1)
        ei = graph["edge_index"]
        node_k, node_t, node_j, node_i = ei[0, a], ei[0, b], ei[0, c], ei[1, c]
        p = batch.pos
        target = dihedral_bins(p[node_i], p[node_j], p[node_t], p[node_k], self.num_class)
        node = self.encode(batch, graph=S.remove_edges(graph, torch.cat([a, b, c])))["node_feature"]
        pred = self.mlp(torch.cat([node[node_i], node[node_j], node[node_k], node[node_t]], dim=-1).float())
        loss = F.cross_entropy(pred, target)
        acc = (pred.detach().argmax(-1) == target).float().mean()
        return TaskOutput(loss=loss, pred=pred.detach(), target=target,
                          logs={"ce": loss.detach(), "accuracy": acc, "skipped_proteins": torch.tensor(float(skipped))})

    def evaluate(self, preds, targets):
        return {"accuracy": self.accuracy(preds, targets), "ce": float(F.cross_entropy(preds.float(), targets))}
