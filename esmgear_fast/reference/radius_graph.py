from typing import Optional

import torch

from ._graph import nearest_edges, protein_ptr, squared_distances


def radius_graph(
    pos: torch.Tensor,
    r: float,
    batch: Optional[torch.Tensor] = None,
    max_num_neighbors: Optional[int] = 32,
    loop: bool = False,
) -> torch.Tensor:
    """Reference radius graph: edges j -> i with |pos_j - pos_i| < r within each protein.

    Targets with more than ``max_num_neighbors`` such sources keep the nearest ones, ties broken by
    lower source index. Returns edge_index [2, E] (row 0 source, row 1 target), ordered by
    (target, source). See :func:`esmgear_fast.ops.radius_graph`.
    """
    if not r >= 0:
        raise ValueError(f"radius_graph: r must be a non-negative number, got {r}")
    if max_num_neighbors is not None and max_num_neighbors < 0:
        raise ValueError(f"radius_graph: max_num_neighbors must be >= 0 or None, got {max_num_neighbors}")
    ptr = protein_ptr("radius_graph", pos, batch)
    r2 = torch.tensor(r * r, dtype=pos.dtype)  # the threshold rounded to the input dtype, as in C++
    edges = [pos.new_empty((2, 0), dtype=torch.long)]
    for start, end in zip(ptr[:-1], ptr[1:]):
        if end == start:
            continue
        d2 = squared_distances(pos[start:end].cpu())
        allowed = d2 < r2
        if not loop:
            allowed.fill_diagonal_(False)
        edges.append(nearest_edges(d2, allowed, max_num_neighbors, start).to(pos.device))
    return torch.cat(edges, dim=1)
