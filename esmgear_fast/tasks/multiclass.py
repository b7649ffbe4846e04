"""Single-label classification into one of ``C`` classes (custom data sets and the demo)."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .base import MLP, Task, TaskConfig, register_task, dataset_info

__all__ = ["MultiClassification"]


class MultiClassification(Task):
    """``num_classes`` logits from the protein's ``graph_feature``; cross-entropy (TorchDrug's
    ``PropertyPrediction`` with the ``ce`` criterion). Metrics: ``accuracy`` (default, selection) and
    ``macro_f1``.

    Inputs: ``{"protein": ProteinBatch, "target": int64 [B]}`` (class indices; ``[B, 1]`` accepted).
    """

    default_metrics = ("accuracy", "macro_f1")
    default_selection_metric = "accuracy"
    criterion = "cross entropy"

    def __init__(self, model: nn.Module, num_classes: int, num_mlp_layer: int = 3, mlp_dropout: float = 0.0,
                 mlp_batch_norm: bool = False, metrics: Optional[Sequence[str]] = None,
                 selection_metric: Optional[str] = None, sequence_model_lr_ratio: float = 0.1,
                 class_names: Optional[Sequence[str]] = None):
        super().__init__(model, metrics, selection_metric, sequence_model_lr_ratio)
        if num_classes < 2 or num_mlp_layer < 1:
            raise ValueError(f"num_classes must be >= 2 and num_mlp_layer >= 1, got {num_classes}, {num_mlp_layer}")
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {num_classes} classes")
        dim = model.output_dim
        self.mlp = MLP(dim, [dim] * (num_mlp_layer - 1) + [self.num_classes], batch_norm=mlp_batch_norm,
                       dropout=mlp_dropout)

    def predict(self, inputs: Dict[str, Any]) -> torch.Tensor:
        return self.mlp(self._graph_feature(inputs["protein"]))

    def _loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.dim() == 2 and target.shape[1] == 1:
            target = target.squeeze(1)
        if target.dim() != 1 or target.shape[0] != pred.shape[0]:
            raise ValueError(f"target must be [B] class indices with B = {pred.shape[0]}, got {tuple(target.shape)}")
        if target.is_floating_point():
            raise TypeError(f"multi-class targets must be int64 class indices, got {target.dtype}")
        target = target.long()
        bad = (target < 0) | (target >= self.num_classes)
        if bad.any():
            raise ValueError(f"target class {int(target[bad][0])} outside [0, {self.num_classes})")
        return F.cross_entropy(pred.float(), target)


@register_task("multiclass")
def _build(cfg: TaskConfig, model: nn.Module, dataset) -> MultiClassification:
    names = dataset_info(dataset, "multiclass", ("multiclass",))
    return MultiClassification(
        model, len(names), num_mlp_layer=3 if cfg.num_mlp_layer is None else cfg.num_mlp_layer,
        mlp_dropout=cfg.mlp_dropout, mlp_batch_norm=cfg.mlp_batch_norm, metrics=cfg.metrics,
        selection_metric=cfg.selection_metric, sequence_model_lr_ratio=cfg.sequence_model_lr_ratio,
        class_names=names)
