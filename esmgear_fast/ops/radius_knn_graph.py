from typing import Optional, Tuple

import torch

from .. import _extension  # noqa: F401  (loads the compiled kernels)
from .. import reference
from ..backend import resolve
from ._graph import prepare_graph_inputs, register_graph_fake

BACKENDS = ("extension", "reference")

register_graph_fake("esmgear_fast::radius_knn_graph", num_outputs=2)


def radius_knn_graph(
    pos: torch.Tensor,
    r: float,
    k: int,
    batch: Optional[torch.Tensor] = None,
    max_num_neighbors: Optional[int] = 32,
    loop: bool = False,
    backend: Optional[str] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(radius_graph(pos, r, batch, max_num_neighbors, loop), knn_graph(pos, k, batch, loop))``
    from one neighbour search.

    Identical to calling :func:`radius_graph` and :func:`knn_graph` (same edges, same order), but
    the CPU kernel scans each target's neighbourhood once: the k nearest sources come from the
    radius candidates whenever at least k lie within ``r``. This is what GearNet's graph needs.
    """
    pos, batch = prepare_graph_inputs("radius_knn_graph", pos, batch)
    if resolve("radius_knn_graph", backend, pos.device, BACKENDS) == "reference":
        return reference.radius_knn_graph(pos, r, k, batch, max_num_neighbors, loop)
    return torch.ops.esmgear_fast.radius_knn_graph(pos, batch, float(r), max_num_neighbors, int(k), loop)
