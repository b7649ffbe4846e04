"""Mutation stability (MSP): ESM-GearNet's ``tasks.MSP`` (TorchDrug ``InteractionPrediction`` with a
shared model)."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .base import MLP, Task, TaskConfig, TaskOutput, dataset_info, masked_task_mean, register_task

__all__ = ["MutationStability", "mutated_residue_mean"]


def mutated_residue_mean(node_feature: torch.Tensor, mutated: torch.Tensor, batch: torch.Tensor,
                         num_graphs: int) -> torch.Tensor:
    """``[B, D]``: per protein the mean of ``node_feature`` over its residues where ``mutated`` is True."""
    weight = mutated.to(node_feature.dtype).unsqueeze(1)
    total = node_feature.new_zeros(num_graphs, node_feature.shape[1]).index_add_(0, batch, node_feature * weight)
    count = node_feature.new_zeros(num_graphs, 1).index_add_(0, batch, weight)
    return total / count


class MutationStability(Task):
    """Does a point mutation stabilise the protein? Binary, from a wild type / mutant pair.

    Both proteins go through the same ``model`` (separately, as ESM-GearNet does: BatchNorm statistics
    are per side). Each side's ``node_feature`` is averaged over the mutated residues — the positions
    where the two residue types differ (the pair must have the same length, as after
    ``TruncateProteinPair``) — and ``mlp(cat(wild_type_mean, mutant_mean))`` is one logit. The head has
    ``num_mlp_layer`` = 1 by default (ESM-GearNet's MSP task: a single ``Linear``, ``mlp.layers.0``).
    Loss: binary cross-entropy with logits (NaN targets left out, ``weight`` buffer as TorchDrug).
    Metrics: ``auroc`` (selection), ``auprc``.

    A pair with no differing residue, or of different lengths, raises ``ValueError`` naming the pair
    (ESM-GearNet would silently average nothing into a zero vector).

    TorchDrug keeps the shared model twice in its state dict (``model.*`` and ``model2.*``); loading
    such a state dict drops the ``model2.*`` copy after checking it equals ``model.*``.

    Inputs: ``{"wild_type": ProteinBatch, "mutant": ProteinBatch, "target": float [B, 1]}``.
    """

    default_metrics = ("auroc", "auprc")
    default_selection_metric = "auroc"
    criterion = "binary cross entropy"

    def __init__(self, model: nn.Module, num_tasks: int = 1, num_mlp_layer: int = 1, mlp_dropout: float = 0.0,
                 mlp_batch_norm: bool = False, metrics: Optional[Sequence[str]] = None,
                 selection_metric: Optional[str] = None, sequence_model_lr_ratio: float = 0.1,
                 task_names: Optional[Sequence[str]] = None):
        super().__init__(model, metrics, selection_metric, sequence_model_lr_ratio)
        if num_tasks < 1 or num_mlp_layer < 1:
            raise ValueError(f"num_tasks and num_mlp_layer must be >= 1, got {num_tasks}, {num_mlp_layer}")
        self.num_tasks = int(num_tasks)
        if task_names is None:
            task_names = ["label"] if num_tasks == 1 else [str(i) for i in range(num_tasks)]
        self.task_names = list(task_names)
        if len(self.task_names) != self.num_tasks:
            raise ValueError(f"{len(self.task_names)} task names for {num_tasks} tasks")
        dim = model.output_dim
        self.mlp = MLP(2 * dim, [dim] * (num_mlp_layer - 1) + [self.num_tasks], batch_norm=mlp_batch_norm,
                       dropout=mlp_dropout)
        self.register_buffer("weight", torch.ones(self.num_tasks))
        self.register_load_state_dict_pre_hook(_drop_tied_model2)

    def mutated_residues(self, wild_type, mutant) -> torch.Tensor:
        """Bool ``[N]``: residues whose type differs between the two sides; checks every pair."""
        names = [f"{a}/{b}" for a, b in zip(wild_type.names, mutant.names)]
        if wild_type.num_proteins != mutant.num_proteins:
            raise ValueError(f"MutationStability: {wild_type.num_proteins} wild types but {mutant.num_proteins} mutants")
        if not torch.equal(wild_type.num_residues, mutant.num_residues.to(wild_type.num_residues.device)):
            bad = (wild_type.num_residues != mutant.num_residues.to(wild_type.num_residues.device)).nonzero()
            i = int(bad[0])
            raise ValueError(f"MutationStability: pair {i} ({names[i]}) has {int(wild_type.num_residues[i])} wild-type "
                             f"and {int(mutant.num_residues[i])} mutant residues; the two sides must align residue "
                             f"by residue (truncate both the same way)")
        mutated = wild_type.residue_type != mutant.residue_type.to(wild_type.residue_type.device)
        count = torch.zeros(wild_type.num_proteins, dtype=torch.long, device=mutated.device)
        count.index_add_(0, wild_type.batch, mutated.long())
        if (count == 0).any():
            i = int((count == 0).nonzero()[0])
            raise ValueError(f"MutationStability: pair {i} ({names[i]}) has no residue whose type differs between "
                             f"wild type and mutant (mutation outside the kept residues, or identical sequences)")
        return mutated

    def predict(self, inputs: Dict[str, Any]) -> torch.Tensor:
        wild_type, mutant = inputs["wild_type"], inputs["mutant"]
        mutated = self.mutated_residues(wild_type, mutant)
        b = wild_type.num_proteins
        wt = self.model(wild_type)["node_feature"]
        mt = self.model(mutant)["node_feature"]
        wt = mutated_residue_mean(wt, mutated, wild_type.batch, b)
        mt = mutated_residue_mean(mt, mutated, mutant.batch, b)
        return self.mlp(torch.cat([wt, mt], dim=-1))

    def _loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.dim() == 1 and self.num_tasks == 1:
            target = target.unsqueeze(1)
        if target.shape != pred.shape:
            raise ValueError(f"target has shape {tuple(target.shape)}, expected {tuple(pred.shape)}")
        target = target.float()
        labelled = ~torch.isnan(target)
        loss = F.binary_cross_entropy_with_logits(pred.float(), torch.nan_to_num(target), reduction="none")
        return masked_task_mean(loss, labelled, self.weight)

    def forward(self, inputs: Dict[str, Any]) -> TaskOutput:
        pred = self.predict(inputs)
        target = self._target(inputs, pred)
        if target.dim() == 1 and self.num_tasks == 1:
            target = target.unsqueeze(1)
        loss = self._loss(pred, target)
        return TaskOutput(loss=loss, pred=pred.detach(), target=target.detach(), logs={self.criterion: loss.detach()})


def _drop_tied_model2(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                      error_msgs):
    """TorchDrug's MSP state dicts hold the shared model twice (``model2`` is ``model``); keep one."""
    tied = prefix + "model2."
    for key in [k for k in state_dict if k.startswith(tied)]:
        twin = prefix + "model." + key[len(tied):]
        if twin not in state_dict:
            error_msgs.append(f"{key}: model2 must be a copy of model (weights are tied), but {twin} is missing")
        elif not torch.equal(state_dict[key], state_dict[twin]):
            error_msgs.append(f"{key} differs from {twin}: model2 must equal model (weights are tied)")
        del state_dict[key]


@register_task("mutation")
def _build(cfg: TaskConfig, model: nn.Module, dataset) -> MutationStability:
    names = dataset_info(dataset, "mutation", ("binary",))
    return MutationStability(
        model, len(names), num_mlp_layer=1 if cfg.num_mlp_layer is None else cfg.num_mlp_layer,
        mlp_dropout=cfg.mlp_dropout, mlp_batch_norm=cfg.mlp_batch_norm, metrics=cfg.metrics,
        selection_metric=cfg.selection_metric, sequence_model_lr_ratio=cfg.sequence_model_lr_ratio,
        task_names=names)
