"""Distance prediction (TorchDrug's ``DistancePrediction``, ESM-GearNet's ``distance`` config)."""
from __future__ import annotations

import torch
from torch.nn import functional as F

from . import _sampling as S
from ._base import PretrainTask, TaskOutput, head_dims, mlp


class DistancePrediction(PretrainTask):
    """Sample ``num_sample`` edges per protein, remove them from the graph, regress their lengths.

    The encoder sees the graph without the sampled edges; an MLP on ``[h_i ‖ h_j]`` (source, target)
    predicts ``|x_i - x_j|`` in Å, mean squared error. ``pred``/``target``: ``[S]`` distances.
    """

    name = "distance"
    selection_metric = "mse"
    selection_mode = "min"

    def __init__(self, model, num_sample: int = 256, num_mlp_layer: int = 2, fix_sequence_model: bool = True,
                 crop_length=100, exclude_self_loops: bool = True):
        super().__init__(model, fix_sequence_model, crop_length)
        if num_sample < 1:
            raise ValueError(f"num_sample must be >= 1, got {num_sample}")
        self.num_sample = int(num_sample)
        self.exclude_self_loops = bool(exclude_self_loops)
        self.mlp = mlp(2 * model.output_dim, head_dims(model.output_dim, num_mlp_layer, 1))

    def compute(self, batch) -> TaskOutput:
        batch = self.crop(batch)
        graph = self.build_graph(batch)
        edges, _, skipped = S.sample_edges(graph, batch.batch, batch.num_proteins, self.num_sample,
                                           self.exclude_self_loops)
        edges = edges.reshape(-1)
        src, dst = graph["edge_index"][:, edges]
        target = (batch.pos[src] - batch.pos[dst]).norm(dim=-1)
        node = self.encode(batch, graph=S.remove_edges(graph, edges))["node_feature"]
        pred = self.mlp(torch.cat([node[src], node[dst]], dim=-1).float()).squeeze(-1)
        loss = F.mse_loss(pred, target)
        return TaskOutput(loss=loss, pred=pred.detach(), target=target,
                          logs={"mse": loss.detach(), "skipped_proteins": torch.tensor(float(skipped))})

    def evaluate(self, preds, targets):
        return {"mse": float(F.mse_loss(preds.float(), targets.float()))}
