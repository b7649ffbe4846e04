"""Checkpoints: atomic writes, RNG state capture, starting weights, and :func:`load_task` for inference.

Our files are ``torch.save`` dicts read with ``weights_only=True``::

    {"format": "esmgear_fast.checkpoint", "version": 1,
     "config": <the resolved run config as a plain dict>,
     "model": task.state_dict(),             # the task: encoder under "model." + head
     "tasks": [label names], "task_type": str | None,
     # last.pt only (the training state):
     "optimizer", "scheduler", "scaler", "rng": [per-rank RNG states], "world_size",
     "epoch", "batch_in_epoch", "step", "records", "best", "epoch_state"}

Every write goes to a temporary file in the same folder, is fsync'ed and renamed over the target, so a
process killed at any moment leaves either the previous file or the new one.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np
import torch

__all__ = ["FORMAT", "VERSION", "CheckpointError", "atomic_write_bytes", "atomic_save", "load_checkpoint",
           "is_our_checkpoint", "rng_state", "set_rng_state", "load_init_weights", "load_task",
           "check_state_dict"]

FORMAT = "esmgear_fast.checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here (wrong file, other architecture, ...)."""


# ----------------------------------------------------------------------------------------------- atomic
def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Union[str, os.PathLike], write: Callable[[Any], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Union[str, os.PathLike], data: bytes) -> None:
    """Writes ``data`` to ``path`` via a temporary file in the same folder, fsync and ``os.replace``:
    readers see the old file or the new one, never a half-written one."""
    _atomic_write(path, lambda f: f.write(data))


def atomic_save(obj: Any, path: Union[str, os.PathLike]) -> None:
    """``torch.save`` with the same atomic guarantee (streams to the temporary file, no copy in memory)."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: Union[str, os.PathLike], map_location: Any = "cpu") -> Dict[str, Any]:
    """Reads one of our checkpoints (``weights_only=True``). Raises ``FileNotFoundError`` /
    :class:`CheckpointError` with the file name for missing files, other formats and unreadable files."""
    path = Path(path)
    if path.is_dir():
        for cand in (path / "checkpoints" / "best.pt", path / "best.pt"):
            if cand.is_file():
                path = cand
                break
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not is_our_checkpoint(ckpt):
        raise CheckpointError(f"{path} is not an esmgear_fast checkpoint (no 'format': '{FORMAT}' entry); "
                              f"published ESM-GearNet .pth files go to run.init_checkpoint, or "
                              f"esmgear_fast.models.load_esm_gearnet")
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(f"{path} has checkpoint version {ckpt['version']}, newer than this "
                              f"esmgear_fast ({VERSION}); upgrade esmgear_fast")
    return ckpt


def is_our_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


# ----------------------------------------------------------------------------------------------- RNG
def rng_state() -> Dict[str, Any]:
    """python / numpy / torch (CPU and every CUDA device) RNG states as tensors and plain values
    (loadable with ``weights_only=True``)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


# ----------------------------------------------------------------------------------------------- weights
def _listing(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_state_dict(target: Dict[str, torch.Tensor], source: Dict[str, torch.Tensor], what: str,
                     allow_missing: bool = False) -> None:
    """Raises :class:`CheckpointError` naming missing, unexpected and shape-mismatching keys."""
    missing = set(target) - set(source)
    unexpected = set(source) - set(target)
    shapes = {k for k in set(target) & set(source)
              if tuple(target[k].shape) != tuple(source[k].shape)}
    problems = []
    if missing and not allow_missing:
        problems.append(f"{len(missing)} keys missing from the checkpoint: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys in the checkpoint: {_listing(unexpected)}")
    if shapes:
        detail = ", ".join(f"{k} {tuple(source[k].shape)} vs model {tuple(target[k].shape)}"
                           for k in sorted(shapes)[:8])
        problems.append(f"{len(shapes)} keys with other shapes: {detail}")
    if problems:
        raise CheckpointError(f"{what} does not match the model's architecture:\n  " + "\n  ".join(problems)
                              + "\n  (check the model section of the config: esm, structure, fusion, hidden_dims)")


def _strip(state: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def load_init_weights(task: torch.nn.Module, path: Union[str, os.PathLike], strict_head: bool = False) -> str:
    """Loads starting weights into ``task`` (before training) and says what was loaded.

    * one of our checkpoints (a previous run's ``best.pt``/``last.pt`` or a pre-training output): its
      encoder (``model.*``) must match ``task.model`` exactly; with ``strict_head`` the whole task must;
    * a published ESM-GearNet ``.pth`` (TorchDrug layout), read by ``esmgear_fast.models.load_esm_gearnet``
      with the fusion of ``task.model``, then loaded strictly into ``task.model``.

    Mismatches raise :class:`CheckpointError` listing the keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"run.init_checkpoint not found: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"run.init_checkpoint {path} is not a readable PyTorch file "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    model_state = task.model.state_dict()
    if is_our_checkpoint(raw):
        if strict_head:
            check_state_dict(task.state_dict(), raw["model"], f"run.init_checkpoint {path}")
            task.load_state_dict(raw["model"], strict=True)
            return f"task weights from {path}"
        enc = _strip(raw["model"], "model.")
        check_state_dict(model_state, enc, f"run.init_checkpoint {path} (encoder 'model.*')")
        task.model.load_state_dict(enc, strict=True)
        return f"encoder weights from {path}"
    # a published ESM-GearNet file (TorchDrug task state dict or {"model": ...})
    try:
        from ..models import load_esm_gearnet
    except ImportError:
        raise CheckpointError(f"run.init_checkpoint {path} is not an esmgear_fast checkpoint, and "
                              f"esmgear_fast.models.load_esm_gearnet (published files) is unavailable") from None
    inner = raw.get("model", raw) if isinstance(raw, dict) else None
    if not isinstance(inner, dict) or not inner or not all(isinstance(v, torch.Tensor) for v in inner.values()):
        raise CheckpointError(f"run.init_checkpoint {path} is neither an esmgear_fast checkpoint nor a "
                              f"state dict of tensors (a published ESM-GearNet .pth)")
    fusion = getattr(task.model, "fusion", "serial")
    try:
        published = load_esm_gearnet(raw, fusion=fusion)
    except Exception as e:
        raise CheckpointError(f"run.init_checkpoint {path}: not a usable ESM-GearNet checkpoint: {e}") from None
    check_state_dict(model_state, published.state_dict(), f"run.init_checkpoint {path} (published ESM-GearNet)")
    task.model.load_state_dict(published.state_dict(), strict=True)
    return f"encoder weights from the published ESM-GearNet file {path}"


class _DatasetInfo:
    """What ``build_task`` needs to know about a dataset, restored from a checkpoint (no data)."""

    def __init__(self, tasks, task_type):
        self.tasks = list(tasks or [])
        self.task_type = task_type
        self.names: list = []
        self.lengths: list = []

    def __len__(self) -> int:
        return 0


def load_task(path: Union[str, os.PathLike], map_location: Any = "cpu") -> Tuple[torch.nn.Module, Any]:
    """Rebuilds the task (model + head) of one of our checkpoints and loads its weights strictly.

    ``path``: a ``.pt`` file or a run folder (then ``checkpoints/best.pt``). Returns ``(task, config)``
    with ``task`` in eval mode on ``map_location`` and ``config`` the run's :class:`Config`.
    """
    from ..models.factory import build_model
    from ..tasks import build_task
    from .config import config_from_dict
    ckpt = load_checkpoint(path, map_location="cpu")
    if "pretrain" in ckpt:   # a pre-training method: rebuilt with the options stored in the file
        from ..pretrain.__main__ import load_pretrain_task
        task, cfg, _ = load_pretrain_task(path, map_location=map_location)
        return task, cfg
    cfg = config_from_dict(ckpt["config"])
    model = build_model(cfg.model, pretrained=False)     # shapes only: the weights come from the checkpoint
    task = build_task(cfg.task, model, _DatasetInfo(ckpt.get("tasks"), ckpt.get("task_type")))
    check_state_dict(task.state_dict(), ckpt["model"], f"checkpoint {path}")
    task.load_state_dict(ckpt["model"], strict=True)
    task.to(map_location)
    task.eval()
    return task, cfg
