from typing import Optional

import torch

from .. import _extension  # noqa: F401  (loads the compiled kernels)
from .. import reference
from ..backend import resolve
from ._graph import prepare_graph_inputs, register_graph_fake

BACKENDS = ("extension", "reference")

register_graph_fake("esmgear_fast::knn_graph")


def knn_graph(
    pos: torch.Tensor,
    k: int,
    batch: Optional[torch.Tensor] = None,
    loop: bool = False,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """k-nearest-neighbour graph over a packed batch of point clouds.

    Every target i receives edges from the k nearest nodes j of its own protein (squared distances
    as in :func:`radius_graph`), ties broken by lower source index; a protein with at most k other
    nodes is connected fully. ``loop=True`` lets a node count as its own neighbour.

    Args:
        pos: [N, 3] float32/float64 positions (float16/bfloat16 are upcast to float32).
        k: neighbours per target, >= 0.
        batch: [N] int64 sorted protein index of each node; ``None`` means one protein.
        loop: allow self loops.
        backend: "auto", "extension" or "reference"; ``None`` uses the current default.

    Returns:
        edge_index [2, E] int64 (row 0 source, row 1 target), ordered by (target, source).
    """
    pos, batch = prepare_graph_inputs("knn_graph", pos, batch)
    if resolve("knn_graph", backend, pos.device, BACKENDS) == "reference":
        return reference.knn_graph(pos, k, batch, loop)
    return torch.ops.esmgear_fast.knn_graph(pos, batch, int(k), loop)
