"""Input handling shared by the graph-construction ops (radius_graph, knn_graph)."""
from typing import Optional, Tuple

import torch


def prepare_graph_inputs(op: str, pos: torch.Tensor, batch: Optional[torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Static checks and documented conversions: half-precision positions are upcast to float32
    (distances are always computed in at least float32), int32 batch vectors become int64."""
    if not isinstance(pos, torch.Tensor):
        raise TypeError(f"{op}: pos must be a tensor, got {type(pos).__name__}")
    if pos.dim() != 2 or pos.size(1) != 3:
        raise ValueError(f"{op}: pos must have shape [N, 3], got {list(pos.shape)}")
    if pos.dtype in (torch.float16, torch.bfloat16):
        pos = pos.float()
    elif pos.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{op}: pos must be a floating-point tensor, got {pos.dtype}")
    if batch is not None:
        if batch.device != pos.device:
            raise ValueError(f"{op}: batch is on {batch.device} but pos is on {pos.device}")
        if batch.dtype == torch.int32:
            batch = batch.long()
    return pos.detach(), batch


def register_graph_fake(qualname: str, num_outputs: int = 1) -> None:
    """Fake kernel: the number of edges is data-dependent."""

    @torch.library.register_fake(qualname)
    def _fake(pos, batch, *args):
        ctx = torch.library.get_ctx()
        out = tuple(pos.new_empty((2, ctx.new_dynamic_size()), dtype=torch.long) for _ in range(num_outputs))
        return out if num_outputs > 1 else out[0]
