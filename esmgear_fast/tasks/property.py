"""Regression of protein properties (PSR: GDT-TS of a model): TorchDrug's ``PropertyPrediction``
with the ``mse`` criterion."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .. import metrics as _metrics
from .base import MLP, Task, TaskConfig, TaskOutput, dataset_info, masked_task_mean, register_task, train_targets

__all__ = ["PropertyPrediction"]


class PropertyPrediction(Task):
    """Real-valued targets ``[B, T]`` from the protein's ``graph_feature``.

    With ``normalization`` (default, as ESM-GearNet's PSR config) the head's output is in units of the
    training set's standard deviation: :meth:`predict` returns ``mlp(x) * std + mean`` and the loss is
    the mean squared error between ``mlp(x)`` and ``(target - mean) / std`` — TorchDrug's
    ``mse((pred - mean) / std, (target - mean) / std)``. ``mean``/``std`` are buffers (TorchDrug's names)
    filled by :meth:`preprocess` from the training targets (NaN left out; ``std`` unbiased, as
    ``torch.std``). NaN targets are left out of the loss; the per-target losses are averaged with the
    ``weight`` buffer. Metrics (default ``mae``, ``rmse``, ``spearmanr``, ``pearsonr``; selection on
    ``spearmanr``) are global over the evaluation set, on de-normalised predictions — the PSR numbers
    ESM-GearNet reports are this global Spearman, not a per-target-protein average.

    Inputs: ``{"protein": ProteinBatch, "target": float [B, T]}``.
    """

    default_metrics = ("mae", "rmse", "spearmanr", "pearsonr")
    default_selection_metric = "spearmanr"
    criterion = "mean squared error"

    def __init__(self, model: nn.Module, num_tasks: int = 1, num_mlp_layer: int = 3, normalization: bool = True,
                 mlp_dropout: float = 0.0, mlp_batch_norm: bool = False, metrics: Optional[Sequence[str]] = None,
                 selection_metric: Optional[str] = None, sequence_model_lr_ratio: float = 0.1,
                 task_names: Optional[Sequence[str]] = None):
        super().__init__(model, metrics, selection_metric, sequence_model_lr_ratio)
        if num_tasks < 1 or num_mlp_layer < 1:
            raise ValueError(f"num_tasks and num_mlp_layer must be >= 1, got {num_tasks}, {num_mlp_layer}")
        self.num_tasks = int(num_tasks)
        self.task_names = list(task_names) if task_names is not None else [str(i) for i in range(num_tasks)]
        if len(self.task_names) != self.num_tasks:
            raise ValueError(f"{len(self.task_names)} task names for {num_tasks} tasks")
        self.normalization = bool(normalization)
        dim = model.output_dim
        self.mlp = MLP(dim, [dim] * (num_mlp_layer - 1) + [self.num_tasks], batch_norm=mlp_batch_norm,
                       dropout=mlp_dropout)
        self.register_buffer("mean", torch.zeros(self.num_tasks))
        self.register_buffer("std", torch.ones(self.num_tasks))
        self.register_buffer("weight", torch.ones(self.num_tasks))

    def preprocess(self, train_set) -> None:
        """``mean`` and ``std`` of every target over the training set (NaN left out)."""
        targets = train_targets(train_set).float()
        if targets.dim() == 1:
            targets = targets.unsqueeze(1)
        if targets.dim() != 2 or targets.shape[1] != self.num_tasks:
            raise ValueError(f"preprocess(): expected training targets [n, {self.num_tasks}], got {tuple(targets.shape)}")
        mean, std = [], []
        for j, name in enumerate(self.task_names):
            values = targets[:, j][~torch.isnan(targets[:, j])]
            if values.numel() < 2:
                raise ValueError(f"preprocess(): target {name!r} has {values.numel()} labelled training "
                                 f"values; its mean and std need at least 2")
            s = values.std()
            if self.normalization and not s > 0:
                raise ValueError(f"preprocess(): target {name!r} is constant over the training set "
                                 f"(std 0); it cannot be normalised (set normalization: false)")
            mean.append(values.mean())
            std.append(s)
        self.mean.copy_(torch.stack(mean))
        self.std.copy_(torch.stack(std))

    def _raw(self, inputs: Dict[str, Any]) -> torch.Tensor:
        return self.mlp(self._graph_feature(inputs["protein"]))

    def _denormalise(self, raw: torch.Tensor) -> torch.Tensor:
        return raw * self.std + self.mean if self.normalization else raw

    def predict(self, inputs: Dict[str, Any]) -> torch.Tensor:
        return self._denormalise(self._raw(inputs))

    def forward(self, inputs: Dict[str, Any]):
        raw = self._raw(inputs)
        pred = self._denormalise(raw)
        target = self._target(inputs, pred)
        if target.dim() == 1 and self.num_tasks == 1:
            target = target.unsqueeze(1)
        if target.shape != pred.shape:
            raise ValueError(f"target has shape {tuple(target.shape)}, expected {tuple(pred.shape)} "
                             f"(batch, {self.num_tasks} targets)")
        target = target.float()
        labelled = ~torch.isnan(target)
        if self.normalization:
            loss = F.mse_loss(raw.float(), torch.nan_to_num((target - self.mean) / self.std), reduction="none")
        else:
            loss = F.mse_loss(raw.float(), torch.nan_to_num(target), reduction="none")
        loss = masked_task_mean(loss, labelled, self.weight)
        return TaskOutput(loss=loss, pred=pred.detach(), target=target.detach(), logs={self.criterion: loss.detach()})

    def evaluate(self, preds: torch.Tensor, targets: torch.Tensor) -> Dict[str, float]:
        """The configured metrics (averaged over targets when there are several, plus ``"name [target]"``
        entries per target then)."""
        if preds.dim() == 1:
            preds = preds.unsqueeze(1)
        if targets.dim() == 1:
            targets = targets.unsqueeze(1)
        out = {name: _metrics.compute(name, preds, targets) for name in self.metrics}
        if self.num_tasks > 1:
            for j, task in enumerate(self.task_names):
                for name in self.metrics:
                    out[f"{name} [{task}]"] = _metrics.compute(name, preds[:, j], targets[:, j])
        return out


@register_task("property")
def _build(cfg: TaskConfig, model: nn.Module, dataset) -> PropertyPrediction:
    names = dataset_info(dataset, "property", ("regression",))
    return PropertyPrediction(
        model, len(names), num_mlp_layer=3 if cfg.num_mlp_layer is None else cfg.num_mlp_layer, normalization=cfg.normalization,
        mlp_dropout=cfg.mlp_dropout, mlp_batch_norm=cfg.mlp_batch_norm, metrics=cfg.metrics,
        selection_metric=cfg.selection_metric, sequence_model_lr_ratio=cfg.sequence_model_lr_ratio,
        task_names=names)
