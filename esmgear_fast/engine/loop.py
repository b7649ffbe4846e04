"""The training loop shared by fine-tuning and pre-training: :class:`Engine`.

The engine drives any task module with the task interface (``forward(inputs) -> TaskOutput(loss, pred,
target, logs)``, ``evaluate(preds, targets)``, ``parameter_groups(lr, ratio, weight_decay)``,
``selection_metric`` / ``selection_mode``). It knows nothing about proteins: datasets give dict samples,
``collate_fn`` packs them, the task computes its loss.

What it does per run: optimizer from the task's parameter groups, learning-rate schedule, gradient
accumulation to an effective batch size, autocast (bf16/fp16, gradient scaling for fp16), DDP under
torchrun (gradients synchronised only on the last micro-batch of an accumulation group), evaluation over
the whole split with predictions gathered across ranks, model selection on the validation metric, and
atomic resumable checkpoints.

Exact resume: the batch order of an epoch is a pure function of ``(train.seed, epoch)`` and every
sample's random transform a pure function of ``(train.seed, epoch, index)`` (whatever the number of
DataLoader workers), and ``last.pt`` holds the position inside the epoch, the optimizer / scheduler /
scaler state, each rank's RNG states and the epoch's running sums. A run killed at any point and resumed
replays exactly the same computation.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from . import distributed as D
from .checkpoint import atomic_save, load_checkpoint, rng_state, set_rng_state
from .config import Config, config_to_dict, save_config
from .logging import RunLogger, progress

__all__ = ["Engine", "NonFiniteLossError", "BatchOutOfMemoryError", "seed_everything", "item_seed"]

_KILL_ENV = "ESMGEAR_FAST_TEST_KILL_AFTER_STEP"  # test hook: SIGKILL this process after that optimizer step


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN/inf; names the step and the batch's proteins."""


class BatchOutOfMemoryError(RuntimeError):
    """A batch did not fit in device memory; names its proteins and their lengths."""


# ----------------------------------------------------------------------------------------------- seeding
def item_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64-style mixing; stable across processes and runs)."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF
        x = (x * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
        x = (x * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 29
    return x & 0x7FFFFFFFFFFFFFFF


def seed_everything(seed: int) -> None:
    """Seeds python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


@contextlib.contextmanager
def _seeded_rngs(seed: int):
    """Runs a block with python / numpy / torch-CPU RNGs seeded by ``seed`` and restores them afterwards."""
    py, npst, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npst)
        torch.set_rng_state(th)


class _EpochItems(torch.utils.data.Dataset):
    """Wraps a dataset so that item ``(epoch, index)`` is produced with RNGs seeded by (seed, epoch, index):
    random transforms are reproducible whatever the worker that loads the item (exact resume)."""

    def __init__(self, dataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        with _seeded_rngs(item_seed(self.seed, epoch, index)):
            return self.dataset[index]


class _ListBatchSampler(torch.utils.data.Sampler):
    """Yields prepared batches of ``(epoch, index)`` keys."""

    def __init__(self, batches: List[List[int]], epoch: int):
        self.batches = batches
        self.epoch = epoch

    def __iter__(self):
        for b in self.batches:
            yield [(self.epoch, i) for i in b]

    def __len__(self):
        return len(self.batches)


def _chunk(indices: Sequence[int], lengths: Optional[Sequence[int]], batch_size: int,
           max_residues: Optional[int]) -> List[List[int]]:
    """Consecutive batches of ``batch_size`` indices, or of at most ``max_residues`` residues."""
    if max_residues is None:
        return [list(indices[i:i + batch_size]) for i in range(0, len(indices), batch_size)]
    if lengths is None:
        raise ValueError("data.max_residues needs a dataset with `lengths` (residues per item)")
    out, cur, total = [], [], 0
    for i in indices:
        n = int(lengths[i])
        if cur and total + n > max_residues:
            out.append(cur)
            cur, total = [], 0
        cur.append(int(i))
        total += n
    if cur:
        out.append(cur)
    return out


# ----------------------------------------------------------------------------------------------- helpers
def _field(out: Any, name: str) -> Any:
    if isinstance(out, dict):
        return out.get(name)
    return getattr(out, name, None)


def _unwrap(module: nn.Module) -> nn.Module:
    while True:
        if hasattr(module, "_orig_mod"):
            module = module._orig_mod
        elif isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        else:
            return module


def _move(inputs: Any, device: torch.device, non_blocking: bool) -> Any:
    try:
        from ..data.samples import move_to
    except ImportError:  # pragma: no cover
        move_to = None
    if move_to is not None:
        try:
            return move_to(inputs, device, non_blocking=non_blocking)
        except TypeError:
            return move_to(inputs, device)
    if isinstance(inputs, torch.Tensor) or hasattr(inputs, "to"):
        return inputs.to(device, non_blocking=non_blocking)
    if isinstance(inputs, dict):
        return {k: _move(v, device, non_blocking) for k, v in inputs.items()}
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(_move(v, device, non_blocking) for v in inputs)
    return inputs


def _batch_names(inputs: Any, indices: Sequence[int], dataset) -> List[str]:
    names = inputs.get("names") if isinstance(inputs, dict) else None
    if names:
        return list(names)
    ds_names = getattr(dataset, "names", None)
    if ds_names is not None:
        try:
            return [str(ds_names[i]) for i in indices]
        except Exception:
            pass
    return [f"item {i}" for i in indices]


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB (process peak RSS)
    except Exception:
        return float("nan")


@dataclass
class _EpochState:
    """Running sums of the current training epoch (checkpointed mid-epoch)."""
    loss_sum: float = 0.0
    batches: int = 0
    proteins: int = 0
    seconds: float = 0.0
    logs: Dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- engine
class Engine:
    """Trains and evaluates one task. Typical use (what ``python -m esmgear_fast.train`` does)::

        engine = Engine(cfg, task, train_set, valid_set, test_set, out_dir="runs/ec", collate_fn=collate_samples)
        summary = engine.fit()        # -> the dict written to summary.json

    Args:
        cfg: the run's :class:`Config` (``optim``, ``train``, ``run``, ``data`` batching are used).
        task: an ``nn.Module`` with the task interface (fine-tuning head or pre-training method).
        train_set / valid_set / test_set: map-style datasets of dict samples (valid/test may be ``None``).
        out_dir: the run folder (created; rank 0 writes).
        collate_fn: packs a list of samples into the task's inputs.
        train_batch_sampler: optional object yielding lists of training indices (e.g. a length-aware
            sampler); it is re-seeded per epoch and must be deterministic given the RNG seed and
            ``set_epoch(epoch)``. Default: a seeded shuffle chunked by ``data.batch_size`` or
            ``data.max_residues``.
        dist: :class:`DistInfo` (default: from torchrun's environment).
        init_message: a line logged at start (e.g. what ``run.init_checkpoint`` loaded).
    """

    def __init__(self, cfg: Config, task: nn.Module, train_set, valid_set=None, test_set=None, *,
                 out_dir, collate_fn: Optional[Callable] = None, train_batch_sampler=None,
                 dist: Optional[D.DistInfo] = None, log: Optional[Callable[[str], None]] = None):
        self.cfg = cfg
        self.dist = dist or D.init_distributed(cfg.train.device)
        self.device = self.dist.device
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.train_set, self.valid_set, self.test_set = train_set, valid_set, test_set
        if collate_fn is None:
            from ..data.samples import collate_samples
            collate_fn = collate_samples
        self.collate_fn = collate_fn
        self.train_batch_sampler = train_batch_sampler
        self._log_fn = log
        self.is_main = self.dist.is_main

        t = cfg.train
        if t.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        self.precision = t.precision
        self.amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[t.precision]
        if self.amp_dtype is torch.bfloat16 and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise RuntimeError("train.precision=bf16 but this GPU does not support bfloat16; use fp16 or fp32")

        # the task on its device; SyncBatchNorm for multi-GPU DDP
        self.task = task.to(self.device)
        if self.dist.distributed and self.device.type == "cuda" and t.sync_batchnorm:
            self.task = nn.SyncBatchNorm.convert_sync_batchnorm(self.task)
        if t.gradient_checkpointing:
            seq = getattr(getattr(self.task, "model", None), "sequence_model", None)
            if seq is not None and hasattr(seq, "gradient_checkpointing"):
                seq.gradient_checkpointing = True

        self.accumulation = self._accumulation_steps()
        self.optimizer = self._build_optimizer()
        self.scheduler = self._build_scheduler()
        self.scaler = (torch.amp.GradScaler(self.device.type) if self.amp_dtype is torch.float16 else None)

        self.module: nn.Module = self.task
        if self.dist.distributed:
            ddp_kwargs = {"device_ids": [self.device.index]} if self.device.type == "cuda" else {}
            self.module = nn.parallel.DistributedDataParallel(
                self.task, find_unused_parameters=t.find_unused_parameters, **ddp_kwargs)
        self.forward_module = torch.compile(self.module, dynamic=True) if t.compile else self.module

        # training state (restored by resume)
        self.epoch = 0               # the epoch in progress (0-based)
        self.batch_in_epoch = 0      # micro-batches of this rank already consumed in `epoch`
        self.step = 0                # optimizer steps so far
        self.records: List[Dict[str, Any]] = []
        self.best: Optional[Dict[str, Any]] = None   # {"epoch", "value", "valid": {...}, "test": {...}}
        self.epoch_state = _EpochState()

    # ------------------------------------------------------------------ setup pieces
    def log(self, message: str) -> None:
        if not self.is_main:
            return
        if self._log_fn is not None:
            self._log_fn(message)
        else:
            print(message, file=sys.stderr, flush=True)

    def _lr(self) -> float:
        """The largest group's learning rate (the head's; ESM's is ``lr * sequence_model_lr_ratio``)."""
        return max(g["lr"] for g in self.optimizer.param_groups)

    def _accumulation_steps(self) -> int:
        t, d = self.cfg.train, self.cfg.data
        world = self.dist.world_size
        if t.effective_batch_size is None:
            return t.gradient_accumulation
        if d.max_residues is not None:
            raise ValueError("train.effective_batch_size counts proteins, but data.max_residues makes batches of "
                             "varying protein counts: set train.effective_batch_size=null and "
                             "train.gradient_accumulation=K instead")
        per_step = world * d.batch_size
        if t.effective_batch_size < per_step:
            raise ValueError(f"train.effective_batch_size={t.effective_batch_size} is smaller than world size "
                             f"x data.batch_size = {world} x {d.batch_size} = {per_step}: lower data.batch_size, "
                             f"use fewer processes, or raise train.effective_batch_size")
        if t.effective_batch_size % per_step:
            raise ValueError(f"train.effective_batch_size={t.effective_batch_size} is not a multiple of world size "
                             f"x data.batch_size = {world} x {d.batch_size} = {per_step}")
        return t.effective_batch_size // per_step

    def _build_optimizer(self) -> torch.optim.Optimizer:
        o = self.cfg.optim
        ratio = getattr(self.cfg.task, "sequence_model_lr_ratio", 0.1)
        if hasattr(self.task, "parameter_groups"):
            groups = self.task.parameter_groups(o.lr, sequence_model_lr_ratio=ratio, weight_decay=o.weight_decay)
        else:
            groups = [{"params": [p for p in self.task.parameters() if p.requires_grad], "lr": o.lr,
                       "weight_decay": o.weight_decay}]
        groups = [g for g in groups if len(list(g["params"])) > 0]
        if not groups:
            raise ValueError("the task has no trainable parameters")
        if o.optimizer == "adam":
            return torch.optim.Adam(groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        if o.optimizer == "adamw":
            return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)

    def _build_scheduler(self):
        o, t = self.cfg.optim, self.cfg.train
        if o.scheduler == "none":
            return None
        if o.scheduler == "reduce_on_plateau":
            mode = getattr(self.task, "selection_mode", "max")
            return torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, mode=mode, factor=o.factor,
                                                              patience=o.patience, min_lr=o.min_lr)
        if o.scheduler == "step":
            return torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=o.step_size, gamma=o.gamma)
        # cosine over epochs with optional linear warm-up
        warm, total = o.warmup_epochs, t.epochs
        base = [g["lr"] for g in self.optimizer.param_groups]
        floor = [o.min_lr / o.lr * b for b in base]

        def factor(i, e):
            if e < warm:
                return (e + 1) / (warm + 1)
            progress_ = (e - warm) / max(1, total - warm)
            return (floor[i] + (base[i] - floor[i]) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress_)))) / base[i]
        return torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, [lambda e, i=i: factor(i, e) for i in range(len(base))])

    # ------------------------------------------------------------------ batches
    def _lengths(self, dataset):
        return getattr(dataset, "lengths", None)

    def train_batches(self, epoch: int) -> List[List[int]]:
        """This rank's micro-batches (lists of training-set indices) of ``epoch``: a pure function of
        ``(train.seed, epoch, rank, world size)``."""
        d, t = self.cfg.data, self.cfg.train
        world, rank = self.dist.world_size, self.dist.rank
        with _seeded_rngs(item_seed(t.seed, epoch, 0x5A3)):
            sampler = self.train_batch_sampler
            if sampler is not None:
                if hasattr(sampler, "set_epoch"):
                    sampler.set_epoch(epoch)
                batches = [list(map(int, b)) for b in sampler]
                presharded = getattr(sampler, "num_replicas", 1) > 1
            else:
                g = torch.Generator().manual_seed(item_seed(t.seed, epoch))
                order = torch.randperm(len(self.train_set), generator=g).tolist()
                batches = _chunk(order, self._lengths(self.train_set), d.batch_size, d.max_residues)
                presharded = False
        if not presharded and world > 1:
            if len(batches) < world:
                raise ValueError(f"the training set gives {len(batches)} batch(es) per epoch, fewer than the "
                                 f"{world} processes: every process needs at least one (lower data.batch_size / "
                                 f"data.max_residues or use fewer processes)")
            per_rank = len(batches) // world
            batches = batches[rank::world][:per_rank]
        if t.max_steps_per_epoch is not None:
            batches = batches[: t.max_steps_per_epoch * self.accumulation]
        if not batches:
            if world > 1:
                raise ValueError(f"the training set ({len(self.train_set)} items) gives this process (rank {rank} of "
                                 f"{world}) no batch: every process needs at least one (lower data.batch_size / "
                                 f"data.max_residues or use fewer processes)")
            raise ValueError("the training set is empty")
        return batches

    def eval_batches(self, dataset) -> List[List[int]]:
        """This rank's evaluation batches: the whole set in order, batches dealt round-robin to ranks
        (no item twice, none padded)."""
        d = self.cfg.data
        bs = d.eval_batch_size or d.batch_size
        batches = _chunk(list(range(len(dataset))), self._lengths(dataset), bs, d.max_residues)
        return batches[self.dist.rank::self.dist.world_size]

    def _loader(self, dataset, batches: List[List[int]], epoch: int):
        d = self.cfg.data
        kwargs: Dict[str, Any] = {}
        if d.num_workers > 0:
            kwargs["persistent_workers"] = False
            if d.prefetch_factor is not None:
                kwargs["prefetch_factor"] = d.prefetch_factor
        return torch.utils.data.DataLoader(
            _EpochItems(dataset, self.cfg.train.seed), batch_sampler=_ListBatchSampler(batches, epoch),
            collate_fn=self.collate_fn, num_workers=d.num_workers,
            pin_memory=d.pin_memory and self.device.type == "cuda",
            generator=torch.Generator().manual_seed(item_seed(self.cfg.train.seed, epoch, 7)), **kwargs)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------ checkpoints
    def _dataset_info(self) -> Dict[str, Any]:
        return {"tasks": list(getattr(self.train_set, "tasks", []) or []),
                "task_type": getattr(self.train_set, "task_type", None)}

    def _check_finite_params(self, what: str) -> None:
        flags = [torch.isfinite(p).all() for p in self.task.parameters()]
        if flags and not bool(torch.stack(flags).all()):
            raise NonFiniteLossError(f"the model has NaN/inf parameters; {what} not written "
                                     f"(the previous file is kept)")

    def _payload(self, full: bool) -> Dict[str, Any]:
        payload = {"format": "esmgear_fast.checkpoint", "version": 1, "config": config_to_dict(self.cfg),
                   "model": _unwrap(self.task).state_dict(), **self._dataset_info(),
                   "epoch": self.epoch, "step": self.step}
        if full:
            payload.update({
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "world_size": self.dist.world_size,
                "batch_in_epoch": self.batch_in_epoch,
                "records": self.records, "best": self.best,
                "epoch_state": vars(self.epoch_state).copy(),
            })
        return payload

    def save_last(self) -> None:
        """``checkpoints/last.pt`` with the whole training state (collective: every rank calls it)."""
        states = D.all_gather_object(rng_state())
        if not self.is_main:
            return
        self._check_finite_params("checkpoints/last.pt")
        payload = self._payload(full=True)
        payload["rng"] = states
        atomic_save(payload, self.ckpt_dir / "last.pt")

    def save_best(self) -> None:
        if not self.is_main:
            return
        self._check_finite_params("checkpoints/best.pt")
        atomic_save(self._payload(full=False), self.ckpt_dir / "best.pt")

    def resume(self, path: Optional[os.PathLike] = None) -> bool:
        """Restores the training state of ``last.pt`` (default: this run's). False when there is none."""
        path = Path(path) if path is not None else self.ckpt_dir / "last.pt"
        if not path.is_file():
            return False
        ckpt = load_checkpoint(path, map_location="cpu")
        if "optimizer" not in ckpt:
            raise ValueError(f"{path} holds no training state (a best.pt?); resume needs checkpoints/last.pt")
        if ckpt.get("world_size", 1) != self.dist.world_size:
            raise ValueError(f"{path} was written by a run with {ckpt.get('world_size')} processes, this run has "
                             f"{self.dist.world_size}: resume with the same --nproc_per_node (exact resume "
                             f"depends on it)")
        from .checkpoint import check_state_dict
        check_state_dict(_unwrap(self.task).state_dict(), ckpt["model"], f"checkpoint {path}")
        _unwrap(self.task).load_state_dict(ckpt["model"], strict=True)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt.get("scheduler") is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler") is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step = int(ckpt["epoch"]), int(ckpt["step"])
        self.batch_in_epoch = int(ckpt["batch_in_epoch"])
        self.records = list(ckpt["records"])
        self.best = ckpt["best"]
        self.epoch_state = _EpochState(**ckpt["epoch_state"])
        set_rng_state(ckpt["rng"][self.dist.rank])
        self.log(f"resumed from {path}: epoch {self.epoch}, micro-batch {self.batch_in_epoch}, step {self.step}")
        return True

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, dataset, split: str) -> Dict[str, float]:
        """Loss and the task's metrics over the whole ``dataset`` (predictions gathered from every rank)."""
        if self.dist.distributed:
            self._broadcast_buffers()
        was_training = self.task.training
        self.task.eval()
        batches = self.eval_batches(dataset)
        preds, targets, order = [], [], []
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        count = 0
        logs: Dict[str, torch.Tensor] = {}
        loader = self._loader(dataset, batches, epoch=-1)
        for indices, inputs in zip(batches, progress(loader, self.is_main and self.cfg.run.progress,
                                                     desc=split, total=len(batches))):
            inputs = _move(inputs, self.device, non_blocking=True)
            try:
                with self._autocast():
                    out = self.task(inputs)
            except torch.OutOfMemoryError:
                raise self._oom_error(inputs, indices, dataset, split) from None
            n = len(indices)
            loss_sum += _field(out, "loss").detach().double() * n
            count += n
            for k, v in (_field(out, "logs") or {}).items():
                logs[k] = logs.get(k, 0) + torch.as_tensor(v, device=self.device).detach().double() * n
            pred = _field(out, "pred")
            if pred is not None:
                preds.append(pred.detach().float() if pred.is_floating_point() else pred.detach())
                target = _field(out, "target")
                if target is None:
                    target = inputs["target"]
                targets.append(target.detach())
                order.append(torch.tensor(indices, dtype=torch.int64, device=self.device))
        self.task.train(was_training)
        # whole-set loss (every rank's sums)
        keys = sorted(logs)
        if self.dist.distributed:   # a rank without batches has no log keys: use the union
            keys = sorted(set().union(*D.all_gather_object(keys)))
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        sums = torch.stack([loss_sum, torch.tensor(float(count), dtype=torch.float64, device=self.device)]
                           + [logs.get(k, zero) for k in keys])
        total = torch.stack(D.all_gather_variable(sums[None]), 0).sum(0)[0] if self.dist.distributed else sums
        if float(total[1]) == 0:
            raise ValueError(f"the {split} set is empty")
        metrics: Dict[str, float] = {"loss": float(total[0] / total[1])}
        for j, k in enumerate(keys):
            metrics[k] = float(total[2 + j] / total[1])
        has_pred = D.all_gather_object(bool(preds)) if self.dist.distributed else [bool(preds)]
        if any(has_pred):
            p = self._gather_cat(preds)
            tg = self._gather_cat(targets)
            idx = self._gather_cat(order)
            perm = torch.argsort(idx)
            p, tg = p[perm].cpu(), tg[perm].cpu()
            for k, v in self.task_evaluate(p, tg).items():
                metrics[k] = float(v)
        return metrics

    def _broadcast_buffers(self) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank: DDP broadcasts them before each
        training forward, after which each rank updates its copy with its own batch; evaluation and the
        checkpoint must all use the same (rank 0's) model."""
        import torch.distributed as tdist
        with torch.no_grad():
            for buf in _unwrap(self.task).buffers():
                tdist.broadcast(buf, 0)

    def task_evaluate(self, preds: torch.Tensor, targets: torch.Tensor) -> Dict[str, float]:
        task = _unwrap(self.task)
        if not hasattr(task, "evaluate"):
            return {}
        return task.evaluate(preds, targets)

    def _gather_cat(self, parts: List[torch.Tensor]) -> torch.Tensor:
        local = torch.cat(parts, 0) if parts else None
        if not self.dist.distributed:
            return local
        # ranks without eval batches still join the collective with an empty tensor of the right shape
        meta = D.all_gather_object(None if local is None else (tuple(local.shape[1:]), str(local.dtype)))
        shape, dtype = next(m for m in meta if m is not None)
        if local is None:
            local = torch.empty((0,) + shape, dtype=getattr(torch, dtype.split(".")[-1]), device=self.device)
        return torch.cat(D.all_gather_variable(local), 0)

    def _oom_error(self, inputs, indices, dataset, where: str) -> BatchOutOfMemoryError:
        names = _batch_names(inputs, indices, dataset)
        lengths = self._lengths(dataset)
        detail = ", ".join(f"{n} ({int(lengths[i])} residues)" if lengths is not None else n
                           for n, i in zip(names, indices))
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        hint = ("set data.max_residues (e.g. data.max_residues=2000) to batch by residue count, lower "
                "data.batch_size, truncate long proteins (data.transforms.truncate=550), use "
                "train.precision=bf16 or train.gradient_checkpointing=true")
        return BatchOutOfMemoryError(f"out of memory on {self.device} in {where} for the batch of {len(names)} "
                                     f"protein(s): {detail}. Try: {hint}")

    # ------------------------------------------------------------------ training
    def _nonfinite_error(self, step: int, micro: int, names: List[str], value: float) -> NonFiniteLossError:
        last = self.ckpt_dir / "last.pt"
        kept = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint was written"
        return NonFiniteLossError(
            f"training loss is {value} at epoch {self.epoch}, optimizer step {step}, micro-batch {micro}; "
            f"proteins in that batch: {', '.join(names)}. Check these inputs/targets for NaN, lower optim.lr, "
            f"set optim.grad_clip (e.g. 1.0), or use train.precision=bf16/fp32 instead of fp16. Stopped; {kept} "
            f"and best.pt is untouched.")

    def train_epoch(self) -> None:
        """Runs (the rest of) epoch ``self.epoch``; checkpoints mid-epoch every ``checkpoint_every_steps``."""
        t = self.cfg.train
        epoch = self.epoch
        batches = self.train_batches(epoch)
        n = len(batches)
        start = self.batch_in_epoch
        acc = self.accumulation
        kill_after = int(os.environ.get(_KILL_ENV, "0") or 0)
        check_every = 1 if self.device.type == "cpu" else t.log_every
        self.task.train()
        es = self.epoch_state
        loss_sum = torch.tensor(es.loss_sum, dtype=torch.float64, device=self.device)
        log_sums = {k: torch.tensor(v, dtype=torch.float64, device=self.device) for k, v in es.logs.items()}
        pending: List[tuple] = []          # (step, micro-batch, names, loss tensor) since the last check
        window_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        window_count = 0
        t0 = time.perf_counter()
        seconds_before = es.seconds
        loader = self._loader(self.train_set, batches[start:], epoch)
        it = progress(loader, self.is_main and self.cfg.run.progress, desc=f"epoch {epoch}", total=n - start)

        def check(force_sync: bool = True) -> None:
            nonlocal pending
            if not pending:
                return
            losses = torch.stack([p[3] for p in pending])
            bad = ~torch.isfinite(losses)
            flag = bool(bad.any())
            if self.dist.distributed:
                flag = D.all_reduce_flag(flag, self.device)
            if flag:
                if bad.any():
                    j = int(bad.nonzero()[0, 0])
                    s, m, names, _ = pending[j]
                    raise self._nonfinite_error(s, m, names, float(losses[j]))
                raise NonFiniteLossError(f"training loss is not finite on another process at epoch {epoch} "
                                         f"(see its error); stopped without writing a checkpoint")
            pending = []

        for i, inputs in enumerate(it, start):
            indices = batches[i]
            group_start = (i // acc) * acc
            group_len = min(acc, n - group_start)
            last_in_group = (i - group_start) == group_len - 1
            inputs = _move(inputs, self.device, non_blocking=True)
            sync = (contextlib.nullcontext() if (not self.dist.distributed or last_in_group)
                    else self.module.no_sync())
            try:
                with sync:
                    with self._autocast():
                        out = self.forward_module(inputs)
                    loss = _field(out, "loss")
                    scaled = loss / group_len
                    if self.scaler is not None:
                        self.scaler.scale(scaled).backward()
                    else:
                        scaled.backward()
            except torch.OutOfMemoryError:
                raise self._oom_error(inputs, indices, self.train_set, f"training epoch {epoch}") from None
            detached = loss.detach().double()
            loss_sum += detached
            window_loss += detached
            window_count += 1
            for k, v in (_field(out, "logs") or {}).items():
                log_sums[k] = log_sums.get(k, torch.zeros((), dtype=torch.float64, device=self.device)) + \
                    torch.as_tensor(v, device=self.device).detach().double()
            es.batches += 1
            es.proteins += len(indices)
            pending.append((self.step + 1, i, _batch_names(inputs, indices, self.train_set), detached))
            if len(pending) >= check_every:
                check()
            if not last_in_group:
                continue
            # optimizer step at the end of an accumulation group
            if self.scaler is not None and self.cfg.optim.grad_clip:
                self.scaler.unscale_(self.optimizer)
            if self.cfg.optim.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.task.parameters(), self.cfg.optim.grad_clip)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self.batch_in_epoch = i + 1
            if self.cfg.run.debug_checksums:
                self._write_checksum()
            if self.step % t.log_every == 0:
                check()
                value = float(window_loss / max(1, window_count))   # the only device->host read of the loss
                self.log(f"epoch {epoch} step {self.step} loss {value:.5g} "
                         f"lr {self._lr():.3g}")
                self._logger.scalars("train_step", {"loss": value}, self.step)
                window_loss.zero_()
                window_count = 0
            if t.checkpoint_every_steps and self.step % t.checkpoint_every_steps == 0 and i + 1 < n:
                es.loss_sum = float(loss_sum)
                es.logs = {k: float(v) for k, v in log_sums.items()}
                es.seconds = seconds_before + time.perf_counter() - t0
                check()
                self.save_last()
            if kill_after and self.step == kill_after:   # test hook (simulates kill -9)
                os.kill(os.getpid(), signal.SIGKILL)
        check()
        es.loss_sum = float(loss_sum)
        es.logs = {k: float(v) for k, v in log_sums.items()}
        es.seconds = seconds_before + time.perf_counter() - t0

    def _write_checksum(self) -> None:
        with torch.no_grad():
            total = sum(float(p.double().sum()) + float(p.double().abs().sum()) for p in _unwrap(self.task).parameters())
        path = self.out_dir / "debug" / f"checksums-rank{self.dist.rank}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(f"{self.step} {total!r}\n")

    # ------------------------------------------------------------------ the run
    def _select(self, metrics: Dict[str, float]) -> float:
        task = _unwrap(self.task)
        name = getattr(task, "selection_metric", "loss")
        if name not in metrics:
            raise ValueError(f"the selection metric {name!r} is not among the validation metrics "
                             f"({', '.join(metrics)}); set task.selection_metric to one of them")
        return metrics[name]

    def _better(self, value: float, best: Optional[float]) -> bool:
        if best is None:
            return True
        if isinstance(value, float) and math.isnan(value):
            return False
        mode = getattr(_unwrap(self.task), "selection_mode", "max")
        return value > best if mode == "max" else value < best

    def summary(self) -> Dict[str, Any]:
        task = _unwrap(self.task)
        last = {}
        for r in self.records:
            last.setdefault(r["epoch"], {})[r["split"]] = {k: v for k, v in r.items() if k not in ("epoch", "split")}
        last_epoch = max(last) if last else None
        out: Dict[str, Any] = {
            "selection_metric": getattr(task, "selection_metric", "loss"),
            "selection_mode": getattr(task, "selection_mode", "max"),
            "epochs": self.cfg.train.epochs, "steps": self.step,
            "best_epoch": self.best["epoch"] if self.best else last_epoch,
            "best_valid": self.best["valid"] if self.best else None,
            "best_test": self.best["test"] if self.best else None,
            "last_epoch": last_epoch,
        }
        if last_epoch is not None:
            for split in ("train", "valid", "test"):
                if split in last[last_epoch]:
                    out[f"last_{split}"] = _metrics_only(last[last_epoch][split])
        return out

    def fit(self) -> Dict[str, Any]:
        """Trains ``train.epochs`` epochs (continuing a resumed state), evaluates, selects, checkpoints.
        Returns the summary (also written to ``summary.json``)."""
        cfg, t = self.cfg, self.cfg.train
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out_dir / "config.yaml")
        self._logger = RunLogger(self.out_dir, self.is_main, tensorboard=cfg.run.tensorboard,
                                 wandb_project=cfg.run.wandb, wandb_entity=cfg.run.wandb_entity,
                                 config=config_to_dict(cfg), resume=cfg.run.resume)
        try:
            task = _unwrap(self.task)
            if hasattr(task, "preprocess"):   # training-set statistics (a resumed checkpoint restores them)
                with _seeded_rngs(item_seed(t.seed, 0x9E)):
                    task.preprocess(self.train_set)
            if cfg.run.resume and not self.resume():
                self.log(f"run.resume: no {self.ckpt_dir / 'last.pt'} yet (the run stopped before its first "
                         f"checkpoint); starting from the beginning")
            self._logger.epoch_records(self.records)
            world = self.dist.world_size
            self.log(f"training on {self.device} x {world} process(es), precision {self.precision}, "
                     f"{self.accumulation} micro-batch(es) per optimizer step, {len(self.train_set)} training items")
            while self.epoch < t.epochs:
                self.train_epoch()
                self._end_epoch()
            summary = self.summary()
            self._logger.summary(summary)
            return summary
        finally:
            self._logger.close()

    def _end_epoch(self) -> None:
        t = self.cfg.train
        epoch, es = self.epoch, self.epoch_state
        lr = self._lr()
        peak = _peak_memory_mb(self.device)
        train_rec = {"epoch": epoch, "split": "train", "loss": es.loss_sum / max(1, es.batches),
                     **{k: v / max(1, es.batches) for k, v in es.logs.items()},
                     "lr": lr, "seconds": es.seconds, "proteins_per_s": es.proteins / max(es.seconds, 1e-9),
                     "proteins": es.proteins, "peak_memory_mb": peak, "step": self.step}
        if self.dist.distributed:   # every rank's proteins count towards throughput
            train_rec["proteins"] = sum(D.all_gather_object(es.proteins))
            train_rec["proteins_per_s"] = train_rec["proteins"] / max(es.seconds, 1e-9)
        new = [train_rec]
        results: Dict[str, Dict[str, float]] = {}
        if (epoch + 1) % t.eval_every == 0 or epoch + 1 == t.epochs:
            for split, ds in (("valid", self.valid_set), ("test", self.test_set)):
                if split in t.eval_splits and ds is not None and len(ds) > 0:
                    t0 = time.perf_counter()
                    results[split] = self.evaluate(ds, split)
                    sec = time.perf_counter() - t0
                    new.append({"epoch": epoch, "split": split, **results[split], "seconds": sec,
                                "proteins_per_s": len(ds) / max(sec, 1e-9), "step": self.step})
                    self.log(f"epoch {epoch} {split}: " + ", ".join(f"{k} {v:.4g}" for k, v in results[split].items()))
        self.log(f"epoch {epoch} train: loss {train_rec['loss']:.4g}, {train_rec['proteins_per_s']:.3g} proteins/s")
        # model selection on the validation metric (or the last epoch when there is no validation)
        improved = False
        if "valid" in results:
            value = self._select(results["valid"])
            if self._better(value, self.best["value"] if self.best else None):
                improved = True
                self.best = {"epoch": epoch, "value": value, "valid": results["valid"], "test": results.get("test")}
        elif self.valid_set is None or "valid" not in t.eval_splits:
            improved = True
            self.best = {"epoch": epoch, "value": None, "valid": None, "test": results.get("test")}
        if self.scheduler is not None:
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if "valid" in results:
                    self.scheduler.step(self._select(results["valid"]))
            else:
                self.scheduler.step()
        self.records.extend(new)
        for r in new:
            self._logger.scalars(r["split"], _metrics_only(r), epoch)
        if improved:
            self.save_best()
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_state = _EpochState()
        self.save_last()
        self._logger.epoch_records(self.records)
        self._logger.summary(self.summary())


def _metrics_only(record: Dict[str, Any]) -> Dict[str, Any]:
    skip = {"epoch", "split", "seconds", "proteins_per_s", "peak_memory_mb", "step", "proteins"}
    return {k: v for k, v in record.items() if k not in skip}
