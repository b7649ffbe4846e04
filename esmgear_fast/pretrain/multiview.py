"""Multiview contrast (TorchDrug's ``MultiviewContrast`` in ``tasks.Unsupervised``, ESM-GearNet's ``mc`` config)."""
from __future__ import annotations

import torch
from torch.nn import functional as F

from . import _sampling as S
from ._base import PretrainTask, TaskOutput, mlp


def info_nce(x: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-protein log-probability of the positive: ``s_bb - logsumexp_c s_bc`` with ``s = cos(x_b, y_c) / τ``
    (views of the other proteins of the batch are the negatives; one direction, x against all y, as TorchDrug)."""
    with torch.autocast(x.device.type, enabled=False):     # similarities / 0.07 need float32 under AMP
        x = F.normalize(x.float(), dim=-1)
        y = F.normalize(y.float(), dim=-1)
        score = x @ y.t() / temperature
        return score.diagonal() - score.logsumexp(dim=-1)


class MultiviewContrast(PretrainTask):
    """Two views of every protein, each a random contiguous subsequence of at most ``max_length`` residues
    (``SubsequenceNode``) of the residue graph built on the whole protein, then, with probability 1/2,
    random edge masking (``RandomEdgeMask``, ``edge_mask_rate`` of each protein's edges) or nothing
    (``IdentityNode``). The fused graph features go through a ``num_mlp_layer`` projection MLP; the loss
    is InfoNCE with cosine similarity at temperature ``temperature``, in-batch negatives.

    As TorchDrug, the noise function is drawn once per view and batch. A batch of one protein has no
    negative: its loss is 0 (no gradient). ``pred``: ``[B, 2]`` = (log-probability of the positive,
    1 if the positive has the top score else 0); ``target``: ``[B]`` zeros (the positive's index offset).
    """

    name = "multiview"
    selection_metric = "accuracy"
    selection_mode = "max"

    def __init__(self, model, max_length: int = 50, edge_mask_rate: float = 0.15, num_mlp_layer: int = 2,
                 temperature: float = 0.07, fix_sequence_model: bool = True, crop_length=None):
        super().__init__(model, fix_sequence_model, crop_length)
        if max_length < 1 or not 0.0 <= edge_mask_rate <= 1.0 or temperature <= 0:
            raise ValueError(f"bad multiview options: max_length={max_length}, edge_mask_rate={edge_mask_rate}, "
                             f"temperature={temperature}")
        self.max_length = int(max_length)
        self.edge_mask_rate = float(edge_mask_rate)
        self.temperature = float(temperature)
        self.mlp = mlp(model.output_dim, [model.output_dim] * num_mlp_layer)

    def view(self, batch, graph):
        cropped, index = S.random_crop(batch, self.max_length)
        g = S.subgraph(graph, index, batch.num_nodes)
        masked = bool(torch.rand(()) < 0.5)
        if masked:
            g = S.mask_edges(g, cropped.batch, cropped.num_proteins, self.edge_mask_rate)
        return cropped, g, masked

    def compute(self, batch) -> TaskOutput:
        batch = self.crop(batch)
        graph = self.build_graph(batch)
        outs, num_masked = [], 0
        for _ in range(2):
            cropped, g, masked = self.view(batch, graph)
            num_masked += int(masked)
            outs.append(self.mlp(self.encode(cropped, graph=g)["graph_feature"].float()))
        log_prob = info_nce(outs[0], outs[1], self.temperature)
        loss = -log_prob.mean()
        with torch.no_grad():
            x, y = F.normalize(outs[0].float(), dim=-1), F.normalize(outs[1].float(), dim=-1)
            top1 = ((x @ y.t()).argmax(-1) == torch.arange(len(x), device=x.device)).float()
        pred = torch.stack([log_prob.detach(), top1], dim=-1)
        return TaskOutput(loss=loss, pred=pred, target=torch.zeros(len(x), dtype=torch.long, device=x.device),
                          logs={"infonce": loss.detach(), "accuracy": top1.mean(),
                                "masked_views": torch.tensor(float(num_masked))})

    def evaluate(self, preds, targets):
        if preds.numel() == 0:
            raise ValueError("evaluate() got no samples")
        return {"infonce": float(-preds[:, 0].mean()), "accuracy": float(preds[:, 1].mean())}
