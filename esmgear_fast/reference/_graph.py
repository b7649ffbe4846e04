"""Helpers shared by the graph references (input checks and the per-protein neighbour rule)."""
from typing import List, Optional

import torch


def protein_ptr(op: str, pos: torch.Tensor, batch: Optional[torch.Tensor]) -> List[int]:
    """Validates inputs like the compiled kernels do and returns the protein boundaries."""
    if pos.dim() != 2 or pos.size(1) != 3:
        raise ValueError(f"{op}: pos must have shape [N, 3], got {list(pos.shape)}")
    if pos.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{op}: pos must be float32 or float64, got {pos.dtype}")
    n = pos.size(0)
    finite = torch.isfinite(pos).all(dim=1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0, 0])
        raise ValueError(
            f"{op}: pos has a non-finite (NaN or Inf) coordinate at row {row} (of {n}); remove or "
            "impute missing coordinates before building a graph"
        )
    if batch is None:
        return [0, n]
    if batch.dim() != 1 or batch.size(0) != n:
        raise ValueError(f"{op}: batch must have shape [N] = [{n}], got {list(batch.shape)}")
    if batch.dtype != torch.long:
        raise TypeError(f"{op}: batch must be int64, got {batch.dtype}")
    if n == 0:
        return [0]
    if bool((batch < 0).any()):
        raise ValueError(f"{op}: batch has negative protein indices")
    if bool((batch[1:] < batch[:-1]).any()):
        raise ValueError(f"{op}: batch must be sorted (nodes of each protein contiguous, proteins in order)")
    counts = torch.bincount(batch).tolist()
    ptr = [0]
    for c in counts:
        ptr.append(ptr[-1] + c)
    return ptr


def squared_distances(pos: torch.Tensor) -> torch.Tensor:
    """[target, source] squared distances, computed as (dx*dx + dy*dy) + dz*dz with d = source - target.

    The compiled kernels use this exact expression and order, so all backends agree bit for bit.
    """
    d = pos[None, :, :] - pos[:, None, :]
    return d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1] + d[..., 2] * d[..., 2]


def nearest_edges(d2: torch.Tensor, allowed: torch.Tensor, cap: Optional[int], offset: int) -> torch.Tensor:
    """Edges of one protein: per target (row) the `cap` nearest allowed sources, ties by lower index.

    Returns [2, E] (source, target) ordered by (target, source), shifted by `offset`.
    """
    if cap is not None:
        # Rank each row's allowed sources by (d2, index): a stable sort by distance keeps equal
        # distances in index order, then a stable sort puts the disallowed sources last (sorting on
        # a masked d2 instead would let them tie with genuinely infinite distances).
        order = torch.sort(d2, dim=1, stable=True).indices
        disallowed_last = torch.sort((~allowed).gather(1, order).byte(), dim=1, stable=True).indices
        order = order.gather(1, disallowed_last)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(d2.size(1)).expand_as(order).contiguous())
        allowed = allowed & (rank < cap)
    target, source = allowed.nonzero(as_tuple=True)  # row-major: ordered by (target, source)
    return torch.stack([source, target]) + offset
