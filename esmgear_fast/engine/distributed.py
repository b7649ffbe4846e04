"""Distributed setup from torchrun's environment and the few collectives the engine needs.

``torchrun --nproc_per_node=N -m esmgear_fast.train ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``; :func:`init_distributed` reads them and starts a process group (NCCL on
GPU, gloo on CPU). Without them everything is single-process and the collectives below are identities.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, Optional

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "all_gather_variable", "all_gather_object", "broadcast_object",
           "barrier", "all_reduce_flag", "cleanup"]


@dataclass
class DistInfo:
    """Rank / world size / device of this process."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _pick_device(requested: str, local_rank: int) -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    dev = torch.device(requested)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"train.device={requested!r} but torch sees no CUDA device "
                               f"(torch {torch.__version__}); use train.device=cpu or auto")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    return dev


def init_distributed(device: str = "auto") -> DistInfo:
    """Reads torchrun's environment; starts the process group when ``WORLD_SIZE > 1``.

    The backend is NCCL when this rank's device is CUDA, else gloo. Calling it again returns the same info.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world <= 1:
        return DistInfo(0, 1, 0, dev, None)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise RuntimeError("WORLD_SIZE > 1 but MASTER_ADDR is not set: start multi-process runs with "
                               "torchrun --nproc_per_node=N -m esmgear_fast.train ...")
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world, **kwargs)
    return DistInfo(rank, world, local_rank, dev, backend)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _active():
        dist.barrier()


def all_gather_variable(tensor: torch.Tensor) -> List[torch.Tensor]:
    """Gathers tensors whose first dimension differs across ranks (other dims and dtype must agree).

    Returns the list of every rank's tensor (rank order), each on this rank's device. Pads to the largest
    first dimension for the collective and trims afterwards.
    """
    if not _active():
        return [tensor]
    world = dist.get_world_size()
    # gloo gathers CPU tensors, NCCL CUDA tensors; the tensor is already on this rank's device
    n = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.int64)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s.item()) for s in sizes]
    m = max(sizes)
    padded = torch.zeros((m,) + tuple(tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded.contiguous())
    return [o[:s] for o, s in zip(out, sizes)]


def all_gather_object(obj: Any) -> List[Any]:
    if not _active():
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_flag(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is True on any rank (e.g. a non-finite loss somewhere)."""
    if not _active():
        return flag
    t = torch.tensor([1 if flag else 0], device=device, dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
