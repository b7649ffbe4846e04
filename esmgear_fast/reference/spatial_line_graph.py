"""Plain-PyTorch reference of GearNet's spatial line graph (TorchDrug's ``SpatialLineGraph``)."""
import math
from typing import Tuple

import torch


def spatial_line_graph(pos: torch.Tensor, edge_index: torch.Tensor,
                       num_angle_bin: int = 8) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""Spatial line graph of a residue graph, with TorchDrug's exact semantics.

    The line graph's nodes are the E edges of the residue graph. For every residue j, every edge
    ``a = (k -> j)`` ending at j and every edge ``b = (j -> i)`` starting at j give a line-graph
    edge ``a -> b``. Nothing is filtered: ``b`` may be the reverse of ``a`` (i == k, angle 0) and a
    self loop ``j -> j`` pairs with itself. The relation of ``a -> b`` is the angle at j,

    .. math::
        v_1 = p_i - p_j,\quad v_2 = p_k - p_j,\quad
        \theta = \operatorname{atan2}(\lVert v_1 \times v_2 \rVert,\ v_1 \cdot v_2) \in [0, \pi],

    in float32 (or the dtype of ``pos``), binned as ``min(floor(theta / pi * num_angle_bin),
    num_angle_bin - 1)``: an angle of exactly pi falls in the last bin, and a zero-length vector
    (coincident residues, self loops) gives ``atan2(0, 0) = 0``, the first bin.

    Order (as TorchDrug's ``Graph.line_graph``): grouped by the shared residue j ascending; within
    j, incoming edges a in ascending edge id, and for each of them outgoing edges b in ascending edge
    id. (TorchDrug sorts with an unstable argsort; this reference fixes ties by edge id.)

    Args:
        pos: [N, 3] positions (C-alpha), float.
        edge_index: [2, E] int64, row 0 source, row 1 target.
        num_angle_bin: number of angle bins (8 in GearNet-Edge).

    Returns:
        ``(line_edge_index [2, L], line_edge_type [L])``, int64, with
        ``L = sum_j in_degree(j) * out_degree(j)``; row 0 of ``line_edge_index`` is the edge a,
        row 1 the edge b.
    """
    source, target = edge_index[0], edge_index[1]
    num_nodes = pos.size(0)
    num_edges = source.numel()
    device = source.device
    ids = torch.arange(num_edges, device=device)
    by_target = ids[torch.argsort(target, stable=True)]  # edges ending at j, grouped by j
    by_source = ids[torch.argsort(source, stable=True)]  # edges starting at j, grouped by j
    n_in = torch.bincount(target, minlength=num_nodes)
    n_out = torch.bincount(source, minlength=num_nodes)
    pairs = n_in * n_out
    total = int(pairs.sum())
    node = torch.repeat_interleave(torch.arange(num_nodes, device=device), pairs)
    local = torch.arange(total, device=device) - (pairs.cumsum(0) - pairs)[node]
    fan_out = n_out[node]
    first = by_target[(n_in.cumsum(0) - n_in)[node] + torch.div(local, fan_out, rounding_mode="floor")]
    second = by_source[(n_out.cumsum(0) - n_out)[node] + local % fan_out]
    j = source[second]
    v1 = pos[target[second]] - pos[j]
    v2 = pos[source[first]] - pos[j]
    angle = torch.atan2(torch.linalg.cross(v1, v2).norm(dim=-1), (v1 * v2).sum(-1))
    relation = (angle / math.pi * num_angle_bin).long().clamp(max=num_angle_bin - 1)
    return torch.stack([first, second]), relation
