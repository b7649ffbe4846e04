"""GearNet-Edge's spatial line graph as a compiled op (C++ CPU / CUDA kernels under one schema)."""
from typing import Optional, Tuple

import torch

from .. import _extension  # noqa: F401  (loads the compiled kernels)
from ..backend import resolve
# By module path: the reference package may re-export a function of the same name.
from ..reference.spatial_line_graph import spatial_line_graph as _reference_line_graph

BACKENDS = ("extension", "reference")
_OP = "spatial_line_graph"


@torch.library.register_fake("esmgear_fast::spatial_line_graph")
def _fake(pos, edge_index, num_angle_bin):
    # The number of line-graph edges (sum over residues of in-degree * out-degree) is data-dependent.
    num_pairs = torch.library.get_ctx().new_dynamic_size()
    return (edge_index.new_empty((2, num_pairs)), edge_index.new_empty((num_pairs,)))


def _prepare(pos, edge_index, num_angle_bin):
    """Static checks (traceable under torch.compile) and documented conversions."""
    if not isinstance(pos, torch.Tensor):
        raise TypeError(f"{_OP}: pos must be a tensor, got {type(pos).__name__}")
    if not isinstance(edge_index, torch.Tensor):
        raise TypeError(f"{_OP}: edge_index must be a tensor, got {type(edge_index).__name__}")
    if pos.dim() != 2 or pos.size(1) != 3:
        raise ValueError(f"{_OP}: pos must have shape [N, 3], got {list(pos.shape)}")
    if pos.dtype in (torch.float16, torch.bfloat16):
        pos = pos.float()
    elif pos.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{_OP}: pos must be a floating-point tensor, got {pos.dtype}")
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"{_OP}: edge_index must have shape [2, E], got {list(edge_index.shape)}")
    if edge_index.dtype == torch.int32:
        edge_index = edge_index.long()
    elif edge_index.dtype != torch.int64:
        raise TypeError(f"{_OP}: edge_index must be int64 (or int32), got {edge_index.dtype}")
    if edge_index.device != pos.device:
        raise ValueError(f"{_OP}: edge_index is on {edge_index.device} but pos is on {pos.device}")
    if isinstance(num_angle_bin, bool) or not isinstance(num_angle_bin, int) or num_angle_bin < 1:
        raise ValueError(f"{_OP}: num_angle_bin must be an int >= 1, got {num_angle_bin!r}")
    return pos.detach(), edge_index


def _check_values(pos, edge_index):
    """The value checks the compiled kernels do, for the reference path (indices in range, finite)."""
    n = pos.size(0)
    if edge_index.numel():
        lo, hi = int(edge_index.min()), int(edge_index.max())
        if lo < 0 or hi >= n:
            raise ValueError(f"{_OP}: edge_index has node indices in [{lo}, {hi}], outside [0, N) with N = {n}")
    finite = torch.isfinite(pos).all(1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0, 0])
        raise ValueError(f"{_OP}: pos has a non-finite (NaN or Inf) coordinate at row {row} (of {n})")


def spatial_line_graph(
    pos: torch.Tensor,
    edge_index: torch.Tensor,
    num_angle_bin: int = 8,
    backend: Optional[str] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""GearNet-Edge's spatial line graph (TorchDrug's ``SpatialLineGraph``), as a compiled op.

    The line graph's nodes are the E edges of the residue graph. For every residue j, every edge
    ``a = (k -> j)`` and every edge ``b = (j -> i)`` give a line-graph edge ``a -> b`` (reverse
    pairs, i == k, and self loops included, as in TorchDrug). Its type is the angle at j,
    ``theta = atan2(|v1 x v2|, v1 . v2)`` with ``v1 = pos_i - pos_j``, ``v2 = pos_k - pos_j``,
    binned as ``min(floor(theta / pi * num_angle_bin), num_angle_bin - 1)`` (zero-length vectors
    give theta = 0).

    The extension kernels compute theta in double from the input-dtype edge vectors and round it
    to the input dtype before binning; the reference (TorchDrug's float32 torch ops) can differ
    from that only when its own rounding error straddles a bin edge (never seen on real proteins).
    The edge set and order are identical on every backend.

    Args:
        pos: [N, 3] float32/float64 positions (float16/bfloat16 are upcast to float32). NaN or Inf
            raises ``ValueError`` naming the row. Not differentiated through.
        edge_index: [2, E] int64 (int32 accepted), row 0 source, row 1 target, values in [0, N).
        num_angle_bin: number of angle bins, >= 1 (8 in GearNet-Edge).
        backend: "auto", "extension" or "reference"; ``None`` uses :func:`esmgear_fast.backend.get_backend`.

    Returns:
        ``(line_edge_index [2, L], line_edge_type [L])`` int64 with ``L = sum_j in_degree(j) *
        out_degree(j)``; row 0 is the edge a, row 1 the edge b; grouped by j ascending, then a, then
        b in ascending edge id.
    """
    pos, edge_index = _prepare(pos, edge_index, num_angle_bin)
    if resolve(_OP, backend, pos.device, BACKENDS) == "reference":
        _check_values(pos, edge_index)
        return _reference_line_graph(pos, edge_index, num_angle_bin)
    return torch.ops.esmgear_fast.spatial_line_graph(pos, edge_index, num_angle_bin)
