from typing import Optional

import torch

from ._graph import nearest_edges, protein_ptr, squared_distances


def knn_graph(pos: torch.Tensor, k: int, batch: Optional[torch.Tensor] = None, loop: bool = False) -> torch.Tensor:
    """Reference k-nearest-neighbour graph: per target the k nearest sources of its protein.

    Ties are broken by lower source index; proteins with at most k other nodes connect fully.
    Returns edge_index [2, E] (row 0 source, row 1 target), ordered by (target, source).
    See :func:`esmgear_fast.ops.knn_graph`.
    """
    if k < 0:
        raise ValueError(f"knn_graph: k must be >= 0, got {k}")
    ptr = protein_ptr("knn_graph", pos, batch)
    edges = [pos.new_empty((2, 0), dtype=torch.long)]
    for start, end in zip(ptr[:-1], ptr[1:]):
        if end == start:
            continue
        d2 = squared_distances(pos[start:end].cpu())
        allowed = torch.ones_like(d2, dtype=torch.bool)
        if not loop:
            allowed.fill_diagonal_(False)
        edges.append(nearest_edges(d2, allowed, k, start).to(pos.device))
    return torch.cat(edges, dim=1)
