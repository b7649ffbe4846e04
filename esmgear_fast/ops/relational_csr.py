"""The CSR structure of a relational graph, built once per graph and reused by every GearNet layer
and by the backward passes, and the differentiable CSR aggregation built on it.

:func:`relational_csr` sorts the edges once by (target, relation) — the rows of the [N*R, D] view
of the relational aggregate — and once by (source, relation) for the gradients. The kernels that
consume it (``esmgear_fast::relational_csr_spmm`` / ``_sddmm``, C++ on CPU and Triton) then only
gather, with no per-call bucketing.
"""
from typing import NamedTuple, Optional

import torch

from .. import _extension  # noqa: F401  (loads the compiled kernels)
from ._checks import check_index_range

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class RelationalCSR(NamedTuple):
    """Edges of a relational graph (N nodes, R relations, E edges) sorted for gather kernels.

    Rows are (node, relation) pairs ``node * R + relation``. All tensors are int64 on the graph's
    device except ``weight``.

    Attributes:
        rowptr: [N*R + 1] start of each (target i, relation r) row in the sorted edge order.
        col: [E] source j of each sorted edge.
        row: [E] row ``i * R + r`` of each sorted edge.
        perm: [E] original edge id of each sorted edge (``edge_weight[perm]`` is the sorted weight;
            gradients w.r.t. sorted weights map back through it).
        rowptr_t: [N*R + 1] start of each (source j, relation r) row in the transposed order.
        srcptr: [N + 1] start of each source j in the transposed order (``rowptr_t[::R]``).
        col_t: [E] target i of each edge in the transposed order.
        row_t: [E] row ``i * R + r`` (by target) of each edge in the transposed order.
        perm_t: [E] sorted position of each edge in the transposed order.
        weight: [E] sorted edge weights, or None (all ones).
        num_nodes: N.  num_relation: R.

    Both orders are stable, so edges of one row keep their input order (deterministic sums).
    """

    rowptr: torch.Tensor
    col: torch.Tensor
    row: torch.Tensor
    perm: torch.Tensor
    rowptr_t: torch.Tensor
    srcptr: torch.Tensor
    col_t: torch.Tensor
    row_t: torch.Tensor
    perm_t: torch.Tensor
    weight: Optional[torch.Tensor]
    num_nodes: int
    num_relation: int


def _rowptr(keys: torch.Tensor, num_rows: int) -> torch.Tensor:
    counts = torch.bincount(keys, minlength=num_rows)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def check_graph(op: str, edge_index, edge_type, num_nodes: int, num_relation: int, edge_weight=None,
                device=None) -> None:
    """Shape, dtype, device and (outside torch.compile) range checks of a relational graph."""
    if not isinstance(edge_index, torch.Tensor) or edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"{op}: edge_index must have shape [2, E], got {list(getattr(edge_index, 'shape', []))}")
    if not isinstance(edge_type, torch.Tensor) or edge_type.shape != (edge_index.size(1),):
        raise ValueError(
            f"{op}: edge_type must have shape [E] = [{edge_index.size(1)}], got {list(edge_type.shape)}")
    for name, t in (("edge_index", edge_index), ("edge_type", edge_type)):
        if t.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{op}: {name} must be int64 (or int32), got {t.dtype}")
    if int(num_relation) < 1:
        raise ValueError(f"{op}: num_relation must be >= 1, got {num_relation}")
    if int(num_nodes) < 0:
        raise ValueError(f"{op}: num_nodes must be >= 0, got {num_nodes}")
    device = edge_index.device if device is None else device
    for name, t in (("edge_index", edge_index), ("edge_type", edge_type), ("edge_weight", edge_weight)):
        if t is not None and t.device != device:
            raise ValueError(f"{op}: {name} is on {t.device}, expected {device}")
    if edge_weight is not None:
        if edge_weight.shape != (edge_index.size(1),):
            raise ValueError(
                f"{op}: edge_weight must have shape [E] = [{edge_index.size(1)}], got {list(edge_weight.shape)}")
        if not edge_weight.is_floating_point():
            raise TypeError(f"{op}: edge_weight must be floating point, got {edge_weight.dtype}")
    check_index_range(op, "edge_index", edge_index, num_nodes)
    check_index_range(op, "edge_type", edge_type, num_relation)
    if not torch.compiler.is_compiling() and edge_index.numel():
        if edge_weight is not None and not bool(torch.isfinite(edge_weight).all()):
            raise ValueError(f"{op}: edge_weight has NaN or infinite entries")


def relational_csr(edge_index: torch.Tensor, edge_type: torch.Tensor, num_nodes: int, num_relation: int,
                   edge_weight: Optional[torch.Tensor] = None) -> RelationalCSR:
    """Sorts a relational graph once for the CSR kernels (see :class:`RelationalCSR`).

    Args:
        edge_index: [2, E] int64/int32, row 0 source j, row 1 target i, entries in [0, num_nodes).
        edge_type: [E] int64/int32 relations in [0, num_relation).
        num_nodes: N. num_relation: R >= 1.
        edge_weight: optional [E] float weights, stored permuted (autograd flows back through the
            permutation). Ops also accept the weight per call instead.

    Cost: two stable sorts of E keys and two bincounts; pass the result to
    :func:`~esmgear_fast.ops.relational_aggregate`, :func:`~esmgear_fast.ops.relational_linear`
    and the layers (``csr=``) to reuse it across layers and in backward.
    """
    op = "relational_csr"
    num_nodes, num_relation = int(num_nodes), int(num_relation)
    check_graph(op, edge_index, edge_type, num_nodes, num_relation, edge_weight)
    source, target = edge_index[0].long(), edge_index[1].long()
    rel = edge_type.long()
    rows = num_nodes * num_relation
    key = target * num_relation + rel
    perm = torch.argsort(key, stable=True)
    row = key[perm]
    col = source[perm]
    key_t = col * num_relation + rel[perm]  # (source, relation) of each sorted edge
    perm_t = torch.argsort(key_t, stable=True)
    rowptr_t = _rowptr(key_t, rows)
    return RelationalCSR(
        rowptr=_rowptr(key, rows), col=col, row=row, perm=perm,
        rowptr_t=rowptr_t, srcptr=rowptr_t[::num_relation].contiguous(),
        col_t=target[perm][perm_t], row_t=row[perm_t], perm_t=perm_t,
        weight=None if edge_weight is None else edge_weight[perm],
        num_nodes=num_nodes, num_relation=num_relation,
    )


def check_csr_matches(op: str, csr: RelationalCSR, num_nodes: int, num_relation: int, num_edges: int,
                      device: torch.device) -> None:
    if not isinstance(csr, RelationalCSR):
        raise TypeError(f"{op}: csr must be a RelationalCSR from esmgear_fast.ops.relational_csr, got "
                        f"{type(csr).__name__}")
    if (csr.num_nodes, csr.num_relation, csr.col.numel()) != (num_nodes, num_relation, num_edges):
        raise ValueError(
            f"{op}: csr was built for {csr.num_nodes} nodes, {csr.num_relation} relations and {csr.col.numel()} "
            f"edges, but the call has {num_nodes} nodes, {num_relation} relations and {num_edges} edges")
    if csr.rowptr.device != device:
        raise ValueError(f"{op}: csr is on {csr.rowptr.device} but x is on {device}")


def sorted_weight(op: str, csr: RelationalCSR, edge_weight: Optional[torch.Tensor], dtype: torch.dtype):
    """The CSR-ordered edge weights of a call: ``edge_weight[perm]``, or the csr's own, or None."""
    if edge_weight is not None and csr.weight is not None:
        raise ValueError(f"{op}: edge_weight given both to relational_csr and to the call; pass it once")
    if edge_weight is not None:
        w = edge_weight[csr.perm]
    else:
        w = csr.weight
    return None if w is None else w.to(dtype)


# --- backend primitives --------------------------------------------------------------------------------

@torch.library.register_fake("esmgear_fast::relational_csr_spmm")
def _fake_spmm(x, rowptr, col, weight):
    return x.new_empty((rowptr.size(0) - 1, x.size(1)))


@torch.library.register_fake("esmgear_fast::relational_csr_sddmm")
def _fake_sddmm(a, b, row, col):
    return a.new_empty((row.size(0),))


def primitives(backend: str):
    """(spmm, sddmm, linear, linear_grad_weight) callables of a backend ("extension" or "triton")."""
    if backend == "triton":
        from ..kernels.relational_linear import relational_linear_grad_weight_triton, relational_linear_triton
        from ..kernels.relational_spmm import relational_csr_sddmm_triton, relational_csr_spmm_triton

        return (relational_csr_spmm_triton, relational_csr_sddmm_triton, relational_linear_triton,
                relational_linear_grad_weight_triton)
    ops = torch.ops.esmgear_fast
    return ops.relational_csr_spmm, ops.relational_csr_sddmm, ops.relational_linear, ops.relational_linear_grad_weight


class CSRAggregate(torch.autograd.Function):
    """Differentiable ``[N, R*D]`` aggregate from a RelationalCSR (x and sorted weights get gradients).

    Backward: ``grad_x[j] = sum over edges (j -> i, r) of w * grad_out[i, r-block]`` is the same
    gather over the transposed CSR (rows = sources, columns = target rows ``i*R + r``); the
    sorted-weight gradient is ``<grad_out[i, r-block], x[j]>`` per edge.
    """

    @staticmethod
    def forward(x, weight, rowptr, col, row, srcptr, row_t, perm_t, num_relation, backend):
        spmm = primitives(backend)[0]
        return spmm(x, rowptr, col, weight).view(x.size(0), num_relation * x.size(1))

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, rowptr, col, row, srcptr, row_t, perm_t, num_relation, backend = inputs
        ctx.num_relation, ctx.backend = num_relation, backend
        ctx.save_for_backward(x, weight, col, row, srcptr, row_t, perm_t)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, col, row, srcptr, row_t, perm_t = ctx.saved_tensors
        spmm, sddmm = primitives(ctx.backend)[:2]
        n, dim = x.shape
        g = grad_out.contiguous().view(n * ctx.num_relation, dim)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = spmm(g, srcptr, row_t, None if weight is None else weight[perm_t])
        if weight is not None and ctx.needs_input_grad[1]:
            grad_w = sddmm(g, x, row, col)
        return grad_x, grad_w, None, None, None, None, None, None, None, None


def csr_aggregate(x: torch.Tensor, csr: RelationalCSR, weight: Optional[torch.Tensor], backend: str) -> torch.Tensor:
    """[N, R*D] relational aggregate of x over a RelationalCSR with CSR-ordered weights (or None)."""
    return CSRAggregate.apply(x, weight, csr.rowptr, csr.col, csr.row, csr.srcptr, csr.row_t, csr.perm_t,
                              csr.num_relation, backend)
