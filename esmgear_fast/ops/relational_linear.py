"""Fused GearNet layer product: ``linear(relational_aggregate(x), weight, bias)`` without holding
the [N, R*D] aggregate in memory (C++ tiles on CPU, one Triton kernel on GPU)."""
from typing import Optional

import torch

from .. import _extension  # noqa: F401  (loads the compiled kernels)
from .. import reference
from ..backend import resolve
from .relational_aggregate import _check
from .relational_csr import (RelationalCSR, check_csr_matches, check_graph, primitives, relational_csr,
                             sorted_weight)

# On CPU the C++ kernel leads (Triton runs there only under the interpreter, for tests). There is
# no CUDA kernel of the fused op: on GPU it is Triton or the reference.
BACKENDS = ("extension", "triton", "reference")
BACKENDS_CUDA = ("triton", "reference")


@torch.library.register_fake("esmgear_fast::relational_linear")
def _fake_linear(x, rowptr, col, weight, num_relation, w_t):
    return x.new_empty((x.size(0), w_t.size(1)))


@torch.library.register_fake("esmgear_fast::relational_linear_grad_weight")
def _fake_grad_weight(x, rowptr, col, weight, num_relation, grad_out):
    return x.new_empty((num_relation * x.size(1), grad_out.size(1)))


class CSRLinear(torch.autograd.Function):
    """Differentiable ``A @ lin_weight.t()`` with A the [N, R*D] aggregate of x over a RelationalCSR.

    Backward, with g = grad_out [N, D'] and W = lin_weight [D', R*D] viewed [D', R, D]:

    * ``grad W = (A^T g)^T``, A recomputed tile by tile (never stored);
    * ``grad x[j] = sum_r sum_{e=(j->i), type r} w_e * (g[i] @ W[:, r, :])``, which is the fused
      kernel again on the transposed CSR (rows (j, r), columns i) with x := g and the weight
      ``M[r*D' + n, d] = W[n, r, d]`` [R*D', D];
    * grad of the sorted edge weights ``<(g @ W)[i, r-block], x[j]>``: here the [N, R*D] gradient
      of A is materialised (only when edge weights require grad; GearNet's do not).
    """

    @staticmethod
    def forward(x, weight, lin_weight, rowptr, col, row, rowptr_t, col_t, perm_t, num_relation, backend):
        linear = primitives(backend)[2]
        return linear(x, rowptr, col, weight, num_relation, lin_weight.t())

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, lin_weight, rowptr, col, row, rowptr_t, col_t, perm_t, num_relation, backend = inputs
        ctx.num_relation, ctx.backend = num_relation, backend
        ctx.save_for_backward(x, weight, lin_weight, rowptr, col, row, rowptr_t, col_t, perm_t)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, lin_weight, rowptr, col, row, rowptr_t, col_t, perm_t = ctx.saved_tensors
        _, sddmm, linear, linear_grad_weight = primitives(ctx.backend)
        num_relation = ctx.num_relation
        n, dim = x.shape
        out_dim = lin_weight.size(0)
        g = grad_out.contiguous()
        grad_x = grad_w = grad_lin = None
        if ctx.needs_input_grad[0]:
            m = lin_weight.view(out_dim, num_relation, dim).transpose(0, 1).reshape(num_relation * out_dim, dim)
            grad_x = linear(g, rowptr_t, col_t, None if weight is None else weight[perm_t], num_relation, m)
        if weight is not None and ctx.needs_input_grad[1]:
            grad_agg = (g @ lin_weight).view(n * num_relation, dim)
            grad_w = sddmm(grad_agg, x, row, col)
        if ctx.needs_input_grad[2]:
            grad_lin = linear_grad_weight(x, rowptr, col, weight, num_relation, g).t()
        return grad_x, grad_w, grad_lin, None, None, None, None, None, None, None, None


def relational_linear(
    x: torch.Tensor,
    edge_index: torch.Tensor,
    edge_type: torch.Tensor,
    num_relation: int,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    edge_weight: Optional[torch.Tensor] = None,
    backend: Optional[str] = None,
    csr: Optional[RelationalCSR] = None,
) -> torch.Tensor:
    r"""GearNet's relational graph convolution product, fused: ``linear(relational_aggregate(x), weight, bias)``.

    .. math::
        \mathrm{out}[i] = b + \sum_{r=0}^{R-1} W_{[:,\, rD:(r+1)D]} \sum_{e=(j\to i),\ \mathrm{type}(e)=r} w_e\, x_j

    The extension (C++, CPU) and Triton backends never hold the [N, R*D] aggregate: it is built
    tile by tile of target rows and multiplied at once; the backward recomputes it (weight
    gradient) or runs the same fused kernel on the transposed graph (gradient w.r.t. x). The
    reference backend is the unfused computation.

    Args:
        x: [N, D] float16/bfloat16/float32 (float64: extension and reference only).
        edge_index: [2, E] (row 0 source j, row 1 target i); edge_type: [E] in [0, num_relation).
        num_relation: R.
        weight: [D', R*D] (an ``nn.Linear(R*D, D')`` weight), same dtype as x; bias: [D'] or None.
        edge_weight: [E] or None (ones). Differentiable (materialises [N, R*D] in backward).
        backend: "auto", "extension" (CPU only), "triton" or "reference".
        csr: optional :func:`~esmgear_fast.ops.relational_csr` of the graph (else built per call).

    Returns:
        [N, D'] of x's dtype, differentiable w.r.t. x, weight, bias and edge_weight.
    """
    op = "relational_linear"
    _check(x, edge_index, edge_type, num_relation, edge_weight)
    num_relation = int(num_relation)
    n, dim = x.shape
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.size(1) != num_relation * dim:
        raise ValueError(f"{op}: weight must have shape [D', R*D = {num_relation * dim}], got "
                         f"{list(getattr(weight, 'shape', []))}")
    if weight.dtype != x.dtype or weight.device != x.device:
        raise TypeError(f"{op}: weight ({weight.dtype}, {weight.device}) must match x ({x.dtype}, {x.device})")
    if bias is not None and (bias.shape != (weight.size(0),) or bias.dtype != x.dtype):
        raise ValueError(f"{op}: bias must have shape [{weight.size(0)}] and dtype {x.dtype}, got "
                         f"{list(bias.shape)} {bias.dtype}")
    if csr is not None:
        check_csr_matches(op, csr, n, num_relation, edge_index.size(1), x.device)
    offered = BACKENDS_CUDA if x.device.type == "cuda" else BACKENDS
    chosen = resolve(op, backend, x.device, offered)
    if edge_weight is not None and edge_weight.dtype != x.dtype:
        edge_weight = edge_weight.to(x.dtype)
    if chosen == "reference":
        if csr is not None and csr.weight is not None:
            if edge_weight is not None:
                raise ValueError(f"{op}: edge_weight given both to relational_csr and to the call")
            edge_weight = torch.empty_like(csr.weight).index_copy(0, csr.perm, csr.weight).to(x.dtype)
        check_graph(op, edge_index, edge_type, n, num_relation)
        return reference.relational_linear(x, edge_index.long(), edge_type.long(), num_relation, weight, bias,
                                           edge_weight)
    if chosen == "triton" and x.dtype == torch.float64:
        raise TypeError(f"{op}: the triton backend supports float16, bfloat16 and float32, got float64")
    if csr is None:
        csr = relational_csr(edge_index, edge_type, n, num_relation)
    out = CSRLinear.apply(x, sorted_weight(op, csr, edge_weight, x.dtype), weight, csr.rowptr, csr.col, csr.row,
                          csr.rowptr_t, csr.col_t, csr.perm_t, num_relation, chosen)
    return out if bias is None else out + bias
