from typing import Optional, Tuple

import torch

from .knn_graph import knn_graph
from .radius_graph import radius_graph


def radius_knn_graph(
    pos: torch.Tensor,
    r: float,
    k: int,
    batch: Optional[torch.Tensor] = None,
    max_num_neighbors: Optional[int] = 32,
    loop: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reference: the radius graph and the kNN graph, computed separately."""
    return radius_graph(pos, r, batch, max_num_neighbors, loop), knn_graph(pos, k, batch, loop)
