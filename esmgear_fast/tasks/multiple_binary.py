"""Multi-label classification (EC, GO): TorchDrug's ``MultipleBinaryClassification``."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .base import MLP, Task, TaskConfig, dataset_info, masked_task_mean, register_task, train_targets

__all__ = ["MultipleBinaryClassification"]


class MultipleBinaryClassification(Task):
    """One logit per label from the protein's ``graph_feature``; binary cross-entropy with logits.

    Head: ``mlp`` = ``num_mlp_layer`` Linear layers, hidden width ``model.output_dim``, ReLU between.
    Loss: per label the mean BCE over the batch's labelled proteins (NaN target = missing label, left
    out), then the mean over labels weighted by the ``weight`` buffer (ones unless ``reweight``) —
    with complete labels this is TorchDrug's ``loss.mean(0)`` then weighted mean. Predictions are
    logits; the metrics (default ``auprc@micro``, ``f1_max``; model selection on ``f1_max``) only use
    their order. Buffers ``task_indices`` and ``weight`` exist as in TorchDrug, so its state dicts load
    strictly.

    Inputs: ``{"protein": ProteinBatch, "target": float [B, T]}``.
    """

    default_metrics = ("auprc@micro", "f1_max")
    default_selection_metric = "f1_max"
    criterion = "binary cross entropy"

    def __init__(self, model: nn.Module, num_tasks: int, num_mlp_layer: int = 3, mlp_dropout: float = 0.0,
                 mlp_batch_norm: bool = False, metrics: Optional[Sequence[str]] = None,
                 selection_metric: Optional[str] = None, sequence_model_lr_ratio: float = 0.1,
                 task_names: Optional[Sequence[str]] = None, reweight: bool = False):
        super().__init__(model, metrics, selection_metric, sequence_model_lr_ratio)
        if num_tasks < 1 or num_mlp_layer < 1:
            raise ValueError(f"num_tasks and num_mlp_layer must be >= 1, got {num_tasks}, {num_mlp_layer}")
        self.num_tasks = int(num_tasks)
        self.task_names = list(task_names) if task_names is not None else [str(i) for i in range(num_tasks)]
        if len(self.task_names) != self.num_tasks:
            raise ValueError(f"{len(self.task_names)} task names for {num_tasks} tasks")
        self.reweight = reweight
        dim = model.output_dim
        self.mlp = MLP(dim, [dim] * (num_mlp_layer - 1) + [self.num_tasks], batch_norm=mlp_batch_norm,
                       dropout=mlp_dropout)
        self.register_buffer("task_indices", torch.arange(self.num_tasks))
        self.register_buffer("weight", torch.ones(self.num_tasks))

    def preprocess(self, train_set) -> None:
        """With ``reweight``: TorchDrug's label weights ``clamp(mean(#pos) / #pos, 1, 10)``; else ones."""
        if not self.reweight:
            return
        targets = train_targets(train_set).float()
        if targets.dim() != 2 or targets.shape[1] != self.num_tasks:
            raise ValueError(f"preprocess(): expected training targets [n, {self.num_tasks}], got {tuple(targets.shape)}")
        num_positive = torch.nan_to_num(targets, nan=0.0).sum(0)
        self.weight.copy_((num_positive.mean() / num_positive).clamp(1, 10))

    def predict(self, inputs: Dict[str, Any]) -> torch.Tensor:
        return self.mlp(self._graph_feature(inputs["protein"]))

    def _loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.shape != pred.shape:
            raise ValueError(f"target has shape {tuple(target.shape)}, expected {tuple(pred.shape)} "
                             f"(batch, {self.num_tasks} labels)")
        target = target.float()
        labelled = ~torch.isnan(target)
        loss = F.binary_cross_entropy_with_logits(pred.float(), torch.nan_to_num(target, nan=0.0),
                                                  reduction="none")
        return masked_task_mean(loss, labelled, self.weight)


@register_task("multiple_binary")
def _build(cfg: TaskConfig, model: nn.Module, dataset) -> MultipleBinaryClassification:
    names = dataset_info(dataset, "multiple_binary", ("multilabel", "binary"))
    return MultipleBinaryClassification(
        model, len(names), num_mlp_layer=3 if cfg.num_mlp_layer is None else cfg.num_mlp_layer, mlp_dropout=cfg.mlp_dropout,
        mlp_batch_norm=cfg.mlp_batch_norm, metrics=cfg.metrics, selection_metric=cfg.selection_metric,
        sequence_model_lr_ratio=cfg.sequence_model_lr_ratio, task_names=names)
