from typing import Optional

import torch

from .. import _extension  # noqa: F401  (loads the compiled kernels)
from .. import reference
from ..backend import resolve
from ._graph import prepare_graph_inputs, register_graph_fake

BACKENDS = ("extension", "reference")

register_graph_fake("esmgear_fast::radius_graph")


def radius_graph(
    pos: torch.Tensor,
    r: float,
    batch: Optional[torch.Tensor] = None,
    max_num_neighbors: Optional[int] = 32,
    loop: bool = False,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Radius graph over a packed batch of point clouds (e.g. C-alpha positions of proteins).

    An edge j -> i exists when nodes i and j belong to the same protein and
    ``|pos_j - pos_i| < r`` (strictly), with squared distances computed in the input precision as
    ``(dx*dx + dy*dy) + dz*dz``. When a target has more than ``max_num_neighbors`` candidate
    sources it keeps the nearest ones, ties broken by lower source index; this rule is identical on
    every backend (unlike torch_cluster, whose CPU choice depends on KD-tree visiting order).

    Args:
        pos: [N, 3] float32/float64 positions (float16/bfloat16 are upcast to float32). NaN or Inf
            raises ``ValueError`` naming the row.
        r: radius, >= 0.
        batch: [N] int64 protein index of each node, sorted; ``None`` means one protein.
        max_num_neighbors: cap on sources per target, or ``None`` for no cap.
        loop: include self loops i -> i.
        backend: "auto", "extension" or "reference"; ``None`` uses :func:`esmgear_fast.backend.get_backend`.

    Returns:
        edge_index [2, E] int64: row 0 the source j (neighbour), row 1 the target i (centre),
        ordered by (target, source). Edges never cross proteins.
    """
    pos, batch = prepare_graph_inputs("radius_graph", pos, batch)
    if resolve("radius_graph", backend, pos.device, BACKENDS) == "reference":
        return reference.radius_graph(pos, r, batch, max_num_neighbors, loop)
    return torch.ops.esmgear_fast.radius_graph(pos, batch, float(r), max_num_neighbors, loop)
