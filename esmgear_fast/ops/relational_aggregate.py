from typing import Optional

import torch

from .. import _extension  # noqa: F401  (loads the compiled kernels)
from .. import reference
from ..backend import resolve
from .relational_csr import RelationalCSR, check_csr_matches, csr_aggregate, relational_csr, sorted_weight
from ._checks import check_index_range

# Fastest first, per device. On CPU the Triton backend exists only under TRITON_INTERPRET=1 (for
# tests), so the C++ kernel leads; on GPU the Triton kernel uses the precomputed CSR while the CUDA
# kernel re-buckets the edges in every call (neither has been timed on a GPU yet).
BACKENDS = ("extension", "triton", "reference")
BACKENDS_CUDA = ("triton", "extension", "reference")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@torch.library.register_fake("esmgear_fast::relational_aggregate")
def _fake(x, edge_index, edge_type, num_relation, edge_weight):
    torch._check(x.dim() == 2, lambda: "relational_aggregate: x must have shape [N, D]")
    return x.new_empty((x.size(0), num_relation * x.size(1)))


@torch.library.register_fake("esmgear_fast::relational_aggregate_backward")
def _fake_backward(grad_out, x, edge_index, edge_type, num_relation, edge_weight, need_grad_x, need_grad_weight):
    grad_x = x.new_empty((x.size(0) if need_grad_x else 0, x.size(1)))
    grad_w = x.new_empty((edge_index.size(1) if need_grad_weight else 0,))
    return grad_x, grad_w


def _setup_context(ctx, inputs, output):
    x, edge_index, edge_type, num_relation, edge_weight = inputs
    ctx.num_relation = num_relation
    ctx.has_weight = edge_weight is not None
    ctx.save_for_backward(x, edge_index, edge_type, edge_weight)


def _backward(ctx, grad_out):
    x, edge_index, edge_type, edge_weight = ctx.saved_tensors
    need_x = ctx.needs_input_grad[0]
    need_w = ctx.has_weight and ctx.needs_input_grad[4]
    if not (need_x or need_w):
        return None, None, None, None, None
    grad_x, grad_w = torch.ops.esmgear_fast.relational_aggregate_backward(
        grad_out.contiguous(), x, edge_index, edge_type, ctx.num_relation, edge_weight, need_x, need_w
    )
    return (grad_x if need_x else None), None, None, None, (grad_w if need_w else None)


torch.library.register_autograd(
    "esmgear_fast::relational_aggregate", _backward, setup_context=_setup_context
)


def _check(x, edge_index, edge_type, num_relation, edge_weight):
    op = "relational_aggregate"
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"{op}: x must be a tensor of shape [N, D], got {getattr(x, 'shape', type(x).__name__)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"{op}: edge_index must have shape [2, E], got {list(edge_index.shape)}")
    if edge_type.shape != (edge_index.size(1),):
        raise ValueError(
            f"{op}: edge_type must have shape [E] = [{edge_index.size(1)}], got {list(edge_type.shape)}"
        )
    if int(num_relation) < 1:
        raise ValueError(f"{op}: num_relation must be >= 1, got {num_relation}")
    for name, t in (("edge_index", edge_index), ("edge_type", edge_type), ("edge_weight", edge_weight)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{op}: {name} is on {t.device} but x is on {x.device}")
    if edge_weight is not None and edge_weight.shape != (edge_index.size(1),):
        raise ValueError(
            f"{op}: edge_weight must have shape [E] = [{edge_index.size(1)}], got {list(edge_weight.shape)}"
        )
    for name, t in (("edge_index", edge_index), ("edge_type", edge_type)):
        if t.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{op}: {name} must be int64 (or int32), got {t.dtype}")


def relational_aggregate(
    x: torch.Tensor,
    edge_index: torch.Tensor,
    edge_type: torch.Tensor,
    num_relation: int,
    edge_weight: Optional[torch.Tensor] = None,
    backend: Optional[str] = None,
    csr: Optional[RelationalCSR] = None,
) -> torch.Tensor:
    r"""Per-relation sum aggregation of neighbour features (the message passing of GearNet).

    .. math::
        \mathrm{out}[i,\ r D + d] = \sum_{e = (j \to i),\ \mathrm{type}(e) = r} w_e \, x[j, d]

    i.e. the [N, R, D] tensor of per-relation neighbour sums flattened to [N, R*D] — TorchDrug's
    ``sparse.mm(adjacency[N, N*R].t(), x).view(N, R*D)``. No degree normalisation.

    Args:
        x: [N, D] node features, float32/float64/float16/bfloat16 (half precision accumulates in
            float32 and returns the input dtype).
        edge_index: [2, E] int64 edges, row 0 the source j, row 1 the target i.
        edge_type: [E] int64 relation of each edge, in ``[0, num_relation)``.
        num_relation: R >= 1.
        edge_weight: optional [E] weights (default 1); cast to x's dtype. Differentiable.
        backend: "auto", "extension", "triton" or "reference"; ``None`` uses the global default.
        csr: optional :func:`~esmgear_fast.ops.relational_csr` of this graph (built once per graph,
            reused across layers and in backward). The extension backend on CPU and the Triton
            backend then skip sorting the edges; the CUDA extension kernel and the reference do not
            use it. Without it the Triton backend builds one per call.

    Returns:
        [N, num_relation * D] tensor of x's dtype. Differentiable w.r.t. x and edge_weight. The
        extension kernels (C++ on CPU, CUDA on GPU) and the Triton kernel are deterministic (no
        atomics): edges are bucketed by (target, relation) and summed in their input order.

    Raises:
        ValueError / TypeError for wrong shapes, dtypes or devices, an edge index outside
        ``[0, N)`` or an edge type outside ``[0, num_relation)``.
    """
    _check(x, edge_index, edge_type, num_relation, edge_weight)
    if csr is not None:
        check_csr_matches("relational_aggregate", csr, x.size(0), int(num_relation), edge_index.size(1), x.device)
    edge_index = edge_index.long()
    edge_type = edge_type.long()
    if edge_weight is not None and edge_weight.dtype != x.dtype:
        edge_weight = edge_weight.to(x.dtype)
    offered = BACKENDS_CUDA if x.device.type == "cuda" else BACKENDS
    chosen = resolve("relational_aggregate", backend, x.device, offered)
    if chosen == "reference":
        check_index_range("relational_aggregate", "edge_index", edge_index, x.size(0))
        check_index_range("relational_aggregate", "edge_type", edge_type, num_relation)
        if csr is not None and csr.weight is not None:
            if edge_weight is not None:
                raise ValueError("relational_aggregate: edge_weight given both to relational_csr and to the call")
            edge_weight = torch.empty_like(csr.weight).index_copy(0, csr.perm, csr.weight).to(x.dtype)
        return reference.relational_aggregate(x, edge_index, edge_type, int(num_relation), edge_weight)
    if chosen == "triton" or (csr is not None and x.device.type == "cpu"):
        if x.dtype == torch.float64 and chosen == "triton":
            raise TypeError("relational_aggregate: the triton backend supports float16, bfloat16 and float32, not float64")
        if csr is None:
            csr = relational_csr(edge_index, edge_type, x.size(0), int(num_relation))
        return csr_aggregate(x, csr, sorted_weight("relational_aggregate", csr, edge_weight, x.dtype), chosen)
    if csr is not None and csr.weight is not None:
        if edge_weight is not None:
            raise ValueError("relational_aggregate: edge_weight given both to relational_csr and to the call")
        edge_weight = torch.empty_like(csr.weight).index_copy(0, csr.perm, csr.weight).to(x.dtype)
    return torch.ops.esmgear_fast.relational_aggregate(x, edge_index, edge_type, int(num_relation), edge_weight)
