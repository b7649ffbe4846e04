"""Triton kernels of the fused CDConv aggregation (``esmgear_fast::cdconv_aggregate_triton``).

Registered with ``torch.library.custom_op`` plus fake kernels and autograd, so the op composes with
``torch.compile`` as an opaque call (``triton_op``'s traceable launch does not run under the CPU interpreter).

Same contract as the C++ op ``esmgear_fast::cdconv_aggregate`` (see ``csrc/ops/cdconv.cpp``): edges sorted
by target (``rowptr`` [N+1], ``source`` [E]), smoothed kernel weights ``kernel_weight`` [E, K] in the
compute dtype (float32; float64 for float64 inputs), node features ``x`` [N, C]:

    agg[i, k*C + c] = sum over edges e into i of kernel_weight[e, k] * x[source[e], c]
    out = agg @ weight                         (or agg itself when weight is None)

Kernels (one program owns one output block, so there are no atomics and results are deterministic):

* ``_aggregate_kernel``, grid (N, cdiv(C, BLOCK_C)): per target and channel block, a [K, BLOCK_C]
  float32 accumulator on chip, ``acc += kw[edges]^T @ x[sources]`` over chunks of BLOCK_E edges.
  The per-edge [E, K*C] messages never exist; the [N, K*C] aggregate does (it is E/N times smaller)
  and is multiplied by ``weight`` with one matmul.
* ``_grad_kernel_weight_kernel``, grid (N,): ``grad_kw[e] = G[i] @ x[source[e]]`` with
  ``G = grad_out @ weight^T`` viewed [N, K, C].
* ``_grad_x_kernel``, grid (N, cdiv(C, BLOCK_C)): per source j, ``grad_x[j] = sum_e kw[e] @ G[target[e]]``
  over j's outgoing edges (a source-sorted order of the edges).

Half-precision inputs are loaded and converted to float32 before ``tl.dot`` (IEEE float32 products, so the
result matches the reference to float32 rounding); float64 inputs use float64 throughout (no ``tl.dot``).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

BLOCK_E = 16
BLOCK_C = 32


def _block_k(k: int) -> int:
    return max(16, triton.next_power_of_2(k))


@triton.jit
def _aggregate_kernel(
    x_ptr, kw_ptr, rowptr_ptr, source_ptr, agg_ptr, C, K,
    BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr, FP64: tl.constexpr,
):
    target = tl.program_id(0).to(tl.int64)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_k = tl.arange(0, BLOCK_K)
    mask_c = offs_c < C
    mask_k = offs_k < K
    begin = tl.load(rowptr_ptr + target)
    end = tl.load(rowptr_ptr + target + 1)
    acc_dtype = tl.float64 if FP64 else tl.float32
    acc = tl.zeros((BLOCK_K, BLOCK_C), dtype=acc_dtype)
    start = begin
    while start < end:  # (a range() over loaded bounds does not run under TRITON_INTERPRET)
        offs_e = start + tl.arange(0, BLOCK_E)
        mask_e = offs_e < end
        src = tl.load(source_ptr + offs_e, mask=mask_e, other=0)
        kw = tl.load(kw_ptr + offs_e[:, None] * K + offs_k[None, :], mask=mask_e[:, None] & mask_k[None, :], other=0.0)
        xs = tl.load(x_ptr + src[:, None] * C + offs_c[None, :], mask=mask_e[:, None] & mask_c[None, :], other=0.0)
        kw = kw.to(acc_dtype)
        xs = xs.to(acc_dtype)
        if FP64:
            acc += tl.sum(kw[:, :, None] * xs[:, None, :], axis=0)
        else:
            acc += tl.dot(tl.trans(kw), xs, input_precision="ieee")
        start += BLOCK_E
    out = agg_ptr + target * K * C + offs_k[:, None] * C + offs_c[None, :]
    tl.store(out, acc, mask=mask_k[:, None] & mask_c[None, :])


@triton.jit
def _grad_kernel_weight_kernel(
    x_ptr, g_ptr, rowptr_ptr, source_ptr, grad_kw_ptr, C, K,
    BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr, FP64: tl.constexpr,
):
    target = tl.program_id(0).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    mask_k = offs_k < K
    begin = tl.load(rowptr_ptr + target)
    end = tl.load(rowptr_ptr + target + 1)
    acc_dtype = tl.float64 if FP64 else tl.float32
    start = begin
    while start < end:  # (a range() over loaded bounds does not run under TRITON_INTERPRET)
        offs_e = start + tl.arange(0, BLOCK_E)
        mask_e = offs_e < end
        src = tl.load(source_ptr + offs_e, mask=mask_e, other=0)
        acc = tl.zeros((BLOCK_E, BLOCK_K), dtype=acc_dtype)
        c0 = 0
        while c0 < C:
            offs_c = c0 + tl.arange(0, BLOCK_C)
            mask_c = offs_c < C
            xs = tl.load(x_ptr + src[:, None] * C + offs_c[None, :], mask=mask_e[:, None] & mask_c[None, :], other=0.0)
            g = tl.load(
                g_ptr + target * K * C + offs_k[:, None] * C + offs_c[None, :],
                mask=mask_k[:, None] & mask_c[None, :], other=0.0,
            )
            xs = xs.to(acc_dtype)
            g = g.to(acc_dtype)
            if FP64:
                acc += tl.sum(xs[:, None, :] * g[None, :, :], axis=2)
            else:
                acc += tl.dot(xs, tl.trans(g), input_precision="ieee")
            c0 += BLOCK_C
        tl.store(grad_kw_ptr + offs_e[:, None] * K + offs_k[None, :], acc, mask=mask_e[:, None] & mask_k[None, :])
        start += BLOCK_E


@triton.jit
def _grad_x_kernel(
    kw_ptr, g_ptr, src_rowptr_ptr, src_order_ptr, edge_target_ptr, grad_x_ptr, C, K,
    BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr, FP64: tl.constexpr,
):
    node = tl.program_id(0).to(tl.int64)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    begin = tl.load(src_rowptr_ptr + node)
    end = tl.load(src_rowptr_ptr + node + 1)
    acc_dtype = tl.float64 if FP64 else tl.float32
    acc = tl.zeros((BLOCK_C,), dtype=acc_dtype)
    start = begin
    while start < end:  # (a range() over loaded bounds does not run under TRITON_INTERPRET)
        offs_p = start + tl.arange(0, BLOCK_E)
        mask_e = offs_p < end
        edge = tl.load(src_order_ptr + offs_p, mask=mask_e, other=0)
        tgt = tl.load(edge_target_ptr + edge, mask=mask_e, other=0)
        k = 0
        while k < K:
            a = tl.load(kw_ptr + edge * K + k, mask=mask_e, other=0.0).to(acc_dtype)
            g = tl.load(
                g_ptr + tgt[:, None] * K * C + k * C + offs_c[None, :],
                mask=mask_e[:, None] & mask_c[None, :], other=0.0,
            ).to(acc_dtype)
            acc += tl.sum(a[:, None] * g, axis=0)
            k += 1
        start += BLOCK_E
    tl.store(grad_x_ptr + node * C + offs_c, acc, mask=mask_c)


def _aggregate(x: torch.Tensor, kernel_weight: torch.Tensor, rowptr: torch.Tensor, source: torch.Tensor):
    """[N, K*C] aggregate in the compute dtype of kernel_weight."""
    n, channels = x.shape
    kernel_dim = kernel_weight.size(1)
    agg = torch.empty((n, kernel_dim * channels), dtype=kernel_weight.dtype, device=x.device)
    grid = (n, triton.cdiv(channels, BLOCK_C))
    _aggregate_kernel[grid](
        x, kernel_weight, rowptr, source, agg, channels, kernel_dim,
        BLOCK_E=BLOCK_E, BLOCK_K=_block_k(kernel_dim), BLOCK_C=BLOCK_C, FP64=kernel_weight.dtype == torch.float64,
    )
    return agg


@torch.library.custom_op("esmgear_fast::cdconv_aggregate_triton", mutates_args=())
def cdconv_aggregate_triton(
    x: torch.Tensor, kernel_weight: torch.Tensor, rowptr: torch.Tensor, source: torch.Tensor,
    weight: Optional[torch.Tensor],
) -> torch.Tensor:
    """Triton twin of ``esmgear_fast::cdconv_aggregate``; returns x's dtype."""
    x = x.contiguous()
    agg = _aggregate(x, kernel_weight.contiguous(), rowptr.contiguous(), source.contiguous())
    if weight is None:
        return agg.to(x.dtype)
    return (agg @ weight.to(agg.dtype)).to(x.dtype)


@torch.library.custom_op("esmgear_fast::cdconv_aggregate_triton_backward", mutates_args=())
def cdconv_aggregate_triton_backward(
    grad_out: torch.Tensor, x: torch.Tensor, kernel_weight: torch.Tensor, rowptr: torch.Tensor,
    source: torch.Tensor, weight: Optional[torch.Tensor], need_grad_x: bool, need_grad_kernel_weight: bool,
    need_grad_weight: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x [N, C] x's dtype, grad_kernel_weight [E, K], grad_weight [K*C, C_out]); empty when not asked."""
    x = x.contiguous()
    kernel_weight = kernel_weight.contiguous()
    rowptr = rowptr.contiguous()
    source = source.contiguous()
    n, channels = x.shape
    num_edges, kernel_dim = kernel_weight.shape
    dtype = kernel_weight.dtype
    fp64 = dtype == torch.float64
    need_grad_weight = need_grad_weight and weight is not None
    grad_out = grad_out.to(dtype)
    g = (grad_out @ weight.to(dtype).t()).contiguous() if weight is not None else grad_out.contiguous()
    out_dim = weight.size(1) if weight is not None else kernel_dim * channels
    w_dtype = weight.dtype if weight is not None else dtype

    grad_x = x.new_empty((0, channels))
    grad_kw = kernel_weight.new_empty((0, kernel_dim))
    grad_w = kernel_weight.new_empty((0, out_dim), dtype=w_dtype)
    if need_grad_weight:
        grad_w = (_aggregate(x, kernel_weight, rowptr, source).t() @ grad_out).to(w_dtype)
    if need_grad_kernel_weight:
        grad_kw = torch.empty_like(kernel_weight)
        _grad_kernel_weight_kernel[(n,)](
            x, g, rowptr, source, grad_kw, channels, kernel_dim,
            BLOCK_E=BLOCK_E, BLOCK_K=_block_k(kernel_dim), BLOCK_C=BLOCK_C, FP64=fp64,
        )
    if need_grad_x:
        # Edges sorted by source (stable: targets stay ascending), each edge's target from the CSR.
        src_order = torch.argsort(source, stable=True)
        counts = torch.zeros(n, dtype=torch.int64, device=x.device).index_add(0, source, torch.ones_like(source))
        src_rowptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        edge_ids = torch.arange(num_edges, device=x.device, dtype=torch.int64)
        edge_target = torch.searchsorted(rowptr[1:], edge_ids, right=True)
        grad_x32 = torch.empty((n, channels), dtype=dtype, device=x.device)
        _grad_x_kernel[(n, triton.cdiv(channels, BLOCK_C))](
            kernel_weight, g, src_rowptr, src_order, edge_target, grad_x32, channels, kernel_dim,
            BLOCK_E=BLOCK_E, BLOCK_C=BLOCK_C, FP64=fp64,
        )
        grad_x = grad_x32.to(x.dtype)
    return grad_x, grad_kw, grad_w


@cdconv_aggregate_triton.register_fake
def _fake(x, kernel_weight, rowptr, source, weight):
    out_dim = weight.size(1) if weight is not None else kernel_weight.size(1) * x.size(1)
    return x.new_empty((x.size(0), out_dim))


@cdconv_aggregate_triton_backward.register_fake
def _fake_backward(grad_out, x, kernel_weight, rowptr, source, weight, need_x, need_kw, need_w):
    n, channels = x.shape
    num_edges, kernel_dim = kernel_weight.shape
    need_w = need_w and weight is not None
    out_dim = weight.size(1) if weight is not None else kernel_dim * channels
    w_dtype = weight.dtype if weight is not None else kernel_weight.dtype
    return (
        x.new_empty((n if need_x else 0, channels)),
        kernel_weight.new_empty((num_edges if need_kw else 0, kernel_dim)),
        kernel_weight.new_empty((kernel_dim * channels if need_w else 0, out_dim), dtype=w_dtype),
    )


def _setup_context(ctx, inputs, output):
    x, kernel_weight, rowptr, source, weight = inputs
    ctx.has_weight = weight is not None
    ctx.save_for_backward(x, kernel_weight, rowptr, source, weight)


def _backward(ctx, grad_out):
    x, kernel_weight, rowptr, source, weight = ctx.saved_tensors
    need_x, need_kw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    need_w = ctx.has_weight and ctx.needs_input_grad[4]
    if not (need_x or need_kw or need_w):
        return None, None, None, None, None
    grad_x, grad_kw, grad_w = cdconv_aggregate_triton_backward(
        grad_out.contiguous(), x, kernel_weight, rowptr, source, weight, need_x, need_kw, need_w
    )
    return (grad_x if need_x else None), (grad_kw if need_kw else None), None, None, (grad_w if need_w else None)


cdconv_aggregate_triton.register_autograd(_backward, setup_context=_setup_context)
