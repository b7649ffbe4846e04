"""What every task head shares: :class:`TaskOutput`, :class:`TaskConfig`, the :class:`MLP` head,
the :class:`Task` base class (parameter groups, evaluation) and the :func:`build_task` factory.

A task is an ``nn.Module`` holding the representation model as ``self.model`` (a
:class:`~esmgear_fast.models.FusionNetwork` or anything with ``output_dim`` and
``forward(batch, graph=None, residue_mask=None) -> {"node_feature", "graph_feature"}``) and a head
``self.mlp``. Parameter and buffer names are TorchDrug's (``model.*``, ``mlp.layers.{i}.*``, ``weight``,
``mean``, ``std``, ``task_indices``), so a TorchDrug task's ``state_dict()`` loads with ``strict=True``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .. import metrics as _metrics

__all__ = ["MLP", "TASKS", "Task", "TaskConfig", "TaskOutput", "build_task", "register_task", "masked_task_mean"]


@dataclass
class TaskOutput:
    """What ``task(inputs)`` returns: the training loss, the predictions and targets of the batch (for
    evaluation; detached) and scalars to log (detached)."""

    loss: torch.Tensor
    pred: Optional[torch.Tensor] = None
    target: Optional[torch.Tensor] = None
    logs: Dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class TaskConfig:
    """The ``task:`` section of a training config.

    name: ``multiple_binary`` (EC, GO: multi-label), ``property`` (PSR: regression), ``mutation``
        (MSP: a wild type / mutant pair, binary), ``multiclass``, or a name added with :func:`register_task`.
    num_mlp_layer: Linear layers of the head (hidden width = the model's ``output_dim``); ``None`` takes
        the head's default (3; 1 for ``mutation``, as ESM-GearNet's MSP task).
    mlp_dropout, mlp_batch_norm: dropout / BatchNorm after each hidden layer of the head.
    normalization: regression targets standardised by the training set's mean and std for the loss.
    metrics: metric names for :func:`esmgear_fast.metrics.compute`; ``None`` = the head's defaults.
    selection_metric: the metric that picks the best checkpoint; ``None`` = the head's default.
    sequence_model_lr_ratio: the ESM learning rate is ``lr * ratio``; 0 freezes ESM.
    """

    name: str = "multiple_binary"
    num_mlp_layer: Optional[int] = None
    mlp_dropout: float = 0.0
    mlp_batch_norm: bool = False
    normalization: bool = True
    metrics: Optional[List[str]] = None
    selection_metric: Optional[str] = None
    sequence_model_lr_ratio: float = 0.1


class MLP(nn.Module):
    """TorchDrug's ``MultiLayerPerceptron``: ``Linear`` layers ``layers.{i}``; after every layer but the
    last, optional BatchNorm (``batch_norms.{i}``), the activation, optional dropout.

    ``MLP(d, [h, h, out])`` has 3 layers; ``MLP(d, [out])`` is one ``Linear``.
    """

    def __init__(self, input_dim: int, hidden_dims: Sequence[int], batch_norm: bool = False,
                 activation: str = "relu", dropout: float = 0.0, short_cut: bool = False):
        super().__init__()
        if isinstance(hidden_dims, int):
            hidden_dims = [hidden_dims]
        hidden_dims = list(hidden_dims)
        if not hidden_dims:
            raise ValueError("MLP needs at least one layer (hidden_dims is empty)")
        self.dims = [int(input_dim)] + [int(d) for d in hidden_dims]
        self.short_cut = short_cut
        if not hasattr(F, activation):
            raise ValueError(f"MLP: unknown activation {activation!r} (a torch.nn.functional name)")
        self.activation = getattr(F, activation)
        self.dropout = nn.Dropout(dropout) if dropout else None
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(self.dims[:-1], self.dims[1:]))
        self.batch_norms = (nn.ModuleList(nn.BatchNorm1d(d) for d in self.dims[1:-1])
                            if batch_norm and len(self.dims) > 2 else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer(x)
            if i < last:
                if self.batch_norms is not None:
                    h = self.batch_norms[i](h.flatten(0, -2)).view_as(h)
                h = self.activation(h)
                if self.dropout is not None:
                    h = self.dropout(h)
            if self.short_cut and h.shape == x.shape:
                h = h + x
            x = h
        return x


def masked_task_mean(loss: torch.Tensor, labelled: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """TorchDrug's reduction: per task (column) the mean over labelled rows (0 if none), then the
    ``weight``-weighted mean over tasks."""
    per_task = torch.where(labelled, loss, torch.zeros_like(loss)).sum(0) / labelled.sum(0).clamp(min=1)
    return (per_task * weight).sum() / weight.sum()


def _check_model(model: nn.Module) -> int:
    if not isinstance(model, nn.Module):
        raise TypeError(f"task model must be an nn.Module, got {type(model).__name__}")
    dim = getattr(model, "output_dim", None)
    if not isinstance(dim, int) or dim <= 0:
        raise ValueError(f"task model {type(model).__name__} must have a positive int output_dim, got {dim!r}")
    return dim


class Task(nn.Module):
    """Base of the task heads (contract 2). Subclasses implement :meth:`predict` and :meth:`_loss`."""

    #: the head's defaults, used when the config leaves them out
    default_metrics: Sequence[str] = ()
    default_selection_metric: str = ""
    criterion: str = "loss"

    def __init__(self, model: nn.Module, metrics: Optional[Sequence[str]] = None,
                 selection_metric: Optional[str] = None, sequence_model_lr_ratio: float = 0.1):
        super().__init__()
        _check_model(model)
        self.model = model
        self.metrics = list(metrics) if metrics is not None else list(self.default_metrics)
        for name in self.metrics:
            if name not in _metrics.METRICS:
                raise ValueError(f"{type(self).__name__}: unknown metric {name!r}; known: "
                                 f"{', '.join(sorted(_metrics.METRICS))}")
        self.selection_metric = selection_metric or self.default_selection_metric
        if self.selection_metric not in self.metrics:
            raise ValueError(f"{type(self).__name__}: selection metric {self.selection_metric!r} is not among "
                             f"the metrics {self.metrics}")
        self.selection_mode = "min" if self.selection_metric in _metrics.MINIMIZED else "max"
        self.sequence_model_lr_ratio = float(sequence_model_lr_ratio)

    # ------------------------------------------------------------------ interface
    def predict(self, inputs: Dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def _loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, inputs: Dict[str, Any]) -> TaskOutput:
        pred = self.predict(inputs)
        target = self._target(inputs, pred)
        loss = self._loss(pred, target)
        return TaskOutput(loss=loss, pred=pred.detach(), target=target.detach(),
                          logs={self.criterion: loss.detach()})

    def loss(self, inputs: Dict[str, Any]) -> torch.Tensor:
        return self.forward(inputs).loss

    def preprocess(self, train_set) -> None:
        """Statistics of the training set the head needs (none by default)."""

    def evaluate(self, preds: torch.Tensor, targets: torch.Tensor) -> Dict[str, float]:
        """Every configured metric over a whole evaluation set (predictions as :meth:`predict` returns)."""
        return {name: _metrics.compute(name, preds, targets) for name in self.metrics}

    def parameter_groups(self, lr: float, sequence_model_lr_ratio: Optional[float] = None,
                         weight_decay: float = 0.0) -> List[Dict[str, Any]]:
        """Optimizer groups as ESM-GearNet builds them: ``model.sequence_model`` at ``lr * ratio``, the
        rest of the model (structure encoder, fusion layers) and the head at ``lr``.

        ``sequence_model_lr_ratio`` defaults to the configured one. A ratio of 0 freezes the sequence
        model (``requires_grad=False``; it is left out of every group) — ESM-GearNet keeps it in the
        optimizer at learning rate 0, which leaves it unchanged too. Parameters already frozen are
        left out. Each group has a ``"name"``; empty groups are dropped.
        """
        ratio = self.sequence_model_lr_ratio if sequence_model_lr_ratio is None else float(sequence_model_lr_ratio)
        if ratio < 0:
            raise ValueError(f"sequence_model_lr_ratio must be >= 0, got {ratio}")
        sequence = getattr(self.model, "sequence_model", None)
        sequence_ids = set()
        if sequence is not None:
            if ratio == 0:
                for p in sequence.parameters():
                    p.requires_grad_(False)
            sequence_ids = {id(p) for p in sequence.parameters()}
        model_ids = {id(p) for p in self.model.parameters()}
        groups = {"sequence_model": [], "structure_model": [], "head": []}
        for p in self.parameters():
            if not p.requires_grad:
                continue
            if id(p) in sequence_ids:
                groups["sequence_model"].append(p)
            elif id(p) in model_ids:
                groups["structure_model"].append(p)
            else:
                groups["head"].append(p)
        rates = {"sequence_model": lr * ratio, "structure_model": lr, "head": lr}
        return [{"name": name, "params": params, "lr": rates[name], "weight_decay": weight_decay}
                for name, params in groups.items() if params]

    def load_torchdrug_state_dict(self, path_or_state_dict, **options) -> None:
        """Loads a TorchDrug / ESM-GearNet task checkpoint (``{"model": task.state_dict()}`` or the state
        dict itself) into this task, strictly.

        The ``model.*`` keys are in TorchDrug's ``FusionNetwork`` layout and go through
        :func:`esmgear_fast.models.load_esm_gearnet` (``options`` are passed on, e.g. ``fusion``); the rest
        (``mlp.layers.*`` and buffers such as ``weight``, ``mean``, ``std``, ``task_indices``) must be exactly
        this head's keys. A tied ``model2.*`` copy (MSP) must equal ``model.*`` and is dropped.
        """
        from ..models.factory import _read, load_esm_gearnet, split_state_dict
        data = _read(path_or_state_dict)
        state = data["model"] if isinstance(data, Mapping) and isinstance(data.get("model"), Mapping) else data
        if not isinstance(state, Mapping) or not any(str(k).startswith("model.") for k in state):
            raise ValueError("load_torchdrug_state_dict(): expected a TorchDrug task state dict with model.* keys")
        state = dict(state)
        model_state, head = split_state_dict(state, "model.")
        for key in [k for k in head if k.startswith("model2.")]:
            twin = "model." + key[len("model2."):]
            if twin not in state or not torch.equal(state[twin], head[key]):
                raise ValueError(f"load_torchdrug_state_dict(): {key} is not a copy of {twin}; only a model2 tied "
                                 f"to model (ESM-GearNet's MSP) is supported")
            del head[key]
        loaded = load_esm_gearnet({"model." + k: v for k, v in model_state.items()}, **options)
        full = {"model." + k: v for k, v in loaded.state_dict().items()}
        full.update(head)
        self.load_state_dict(full, strict=True)

    # ------------------------------------------------------------------ helpers
    def _target(self, inputs: Dict[str, Any], pred: torch.Tensor) -> torch.Tensor:
        if "target" not in inputs:
            raise KeyError(f"{type(self).__name__}: the batch has no 'target' (keys: {sorted(inputs)})")
        target = inputs["target"]
        if not isinstance(target, torch.Tensor):
            raise TypeError(f"{type(self).__name__}: target must be a Tensor, got {type(target).__name__}")
        return target.to(pred.device)

    def _graph_feature(self, batch) -> torch.Tensor:
        return self.model(batch)["graph_feature"]


# ---------------------------------------------------------------------------------------- factory
#: task name -> builder(cfg: TaskConfig, model, dataset) -> Task
TASKS: Dict[str, Callable[[TaskConfig, nn.Module, Any], nn.Module]] = {}


def register_task(name: str):
    """Decorator registering a builder ``fn(cfg, model, dataset) -> task`` under ``name`` for :func:`build_task`."""
    def deco(fn):
        if name in TASKS and TASKS[name] is not fn:
            raise ValueError(f"task name {name!r} is already registered")
        TASKS[name] = fn
        return fn
    return deco


def _as_config(task_cfg) -> TaskConfig:
    if isinstance(task_cfg, TaskConfig):
        return task_cfg
    if dataclasses.is_dataclass(task_cfg):
        task_cfg = dataclasses.asdict(task_cfg)
    elif not isinstance(task_cfg, Mapping):
        try:
            from omegaconf import DictConfig, OmegaConf
        except ImportError:  # pragma: no cover - omegaconf is a dependency
            DictConfig = ()
        if isinstance(task_cfg, DictConfig):
            task_cfg = OmegaConf.to_container(task_cfg, resolve=True)
        else:
            raise TypeError(f"task config must be a TaskConfig, dataclass or mapping, got {type(task_cfg).__name__}")
    known = {f.name for f in dataclasses.fields(TaskConfig)}
    unknown = sorted(set(task_cfg) - known)
    if unknown:
        raise ValueError(f"unknown task config keys {unknown}; known: {sorted(known)}")
    return TaskConfig(**dict(task_cfg))


def build_task(task_cfg, model: nn.Module, dataset) -> nn.Module:
    """The task head named by ``task_cfg.name`` around ``model``, sized for ``dataset``.

    ``dataset`` provides ``tasks`` (label names, in label-vector order) and ``task_type``; it is
    checked against the head (e.g. ``property`` needs ``task_type == "regression"``). Training-set
    statistics are the engine's business: it calls ``task.preprocess(train_set)`` before training
    (a checkpoint restores them as buffers instead). A pre-training method name
    (:data:`esmgear_fast.pretrain.METHODS`) builds that method with its default options
    (``esmgear_fast.pretrain.build_pretrain_task`` takes options).
    """
    cfg = _as_config(task_cfg)
    from . import multiclass as _mc, multiple_binary as _mb, mutation as _mu, property as _pp  # noqa: F401
    if cfg.name in TASKS:
        return TASKS[cfg.name](cfg, model, dataset)
    try:
        from ..pretrain import METHODS, build_pretrain_task
    except ImportError:  # pragma: no cover - the pre-training package is part of esmgear_fast
        METHODS, build_pretrain_task = {}, None
    if cfg.name in METHODS:
        return build_pretrain_task(cfg.name, model)
    raise ValueError(f"unknown task {cfg.name!r}; known tasks: {', '.join(sorted(TASKS))}; pre-training "
                     f"methods: {', '.join(sorted(METHODS))}")


def dataset_info(dataset, task: str, allowed_types: Sequence[str]) -> List[str]:
    """``dataset.tasks`` as a list after checking ``dataset.task_type`` is one of ``allowed_types``."""
    for attr in ("tasks", "task_type"):
        if not hasattr(dataset, attr):
            raise TypeError(f"task {task!r}: the dataset ({type(dataset).__name__}) has no {attr!r} attribute")
    if dataset.task_type not in allowed_types:
        raise ValueError(f"task {task!r} needs a dataset with task_type in {list(allowed_types)}, "
                         f"got {dataset.task_type!r} ({type(dataset).__name__})")
    names = [str(t) for t in dataset.tasks]
    if not names:
        raise ValueError(f"task {task!r}: the dataset ({type(dataset).__name__}) has no tasks")
    return names


def train_targets(train_set) -> torch.Tensor:
    """All targets of a training set stacked ``[n, ...]`` without loading structures where the dataset
    allows: ``train_set.targets`` (a tensor), else ``train_set.target(i)``, else ``train_set[i]["target"]``."""
    targets = getattr(train_set, "targets", None)
    if isinstance(targets, torch.Tensor):
        return targets
    if len(train_set) == 0:
        raise ValueError("preprocess(): the training set is empty")
    if callable(getattr(train_set, "target", None)):
        return torch.stack([torch.as_tensor(train_set.target(i)) for i in range(len(train_set))])
    return torch.stack([torch.as_tensor(train_set[i]["target"]) for i in range(len(train_set))])
