"""Triton kernels of the fused GearNet layer product ``relational_linear``: ``out = A @ w_t`` with
A [N, R*D] the relational aggregate of x (``A[i, r*D + d] = sum_{e=(j->i), type r} w_e x[j, d]``)
and w_t [R*D, D'], without ever writing A to memory.

Forward: one program per [BLOCK_M target rows, BLOCK_N output columns] tile; for each relation r
and each BLOCK_K chunk of D it gather-sums the CSR segments of its rows into a [BLOCK_M, BLOCK_K]
float32 register tile and multiplies it with w_t[r*D + k.., n-block] (``tl.dot``, float32
accumulation). Weight gradient ``A^T @ grad_out``: one program per [BLOCK_K rows of one relation,
BLOCK_N] tile of the [R*D, D'] result, recomputing A tiles while walking over all target rows.
The gradient w.r.t. x is the forward kernel on the transposed graph (see
``esmgear_fast/ops/relational_linear.py``). Deterministic (no atomics). Registered as
``torch.library.custom_op`` with fake kernels (see kernels/relational_spmm.py for why not triton_op).
"""
from typing import Optional

import torch
import triton
import triton.language as tl

BLOCK_M = 32
BLOCK_N = 32
BLOCK_K = 32


@triton.jit
def _gather_tile(x_ptr, col_ptr, w_ptr, start, length, max_len, offs_k, k_mask, dim,
                 HAS_WEIGHT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    a = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    # Loops are while loops: triton 3.6's interpreter fails on range() with runtime bounds.
    t = 0
    while t < max_len:
        valid = t < length
        k = start + t
        src = tl.load(col_ptr + k, mask=valid, other=0)
        vals = tl.load(x_ptr + src[:, None] * dim + offs_k[None, :], mask=valid[:, None] & k_mask[None, :],
                       other=0.0).to(tl.float32)
        if HAS_WEIGHT:
            vals = vals * tl.load(w_ptr + k, mask=valid, other=0.0).to(tl.float32)[:, None]
        a += vals
        t += 1
    return a


@triton.jit
def _linear_kernel(x_ptr, rowptr_ptr, col_ptr, w_ptr, wt_ptr, out_ptr, n, dim, out_dim, num_relation,
                   stride_wk, stride_wn, HAS_WEIGHT: tl.constexpr, IEEE_DOT: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < n
    n_mask = offs_n < out_dim
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    r = 0
    while r < num_relation:
        rows = offs_m * num_relation + r
        start = tl.load(rowptr_ptr + rows, mask=m_mask, other=0)
        length = tl.load(rowptr_ptr + rows + 1, mask=m_mask, other=0) - start
        max_len = tl.max(length, axis=0)
        k0 = 0
        while k0 < dim:
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_mask = offs_k < dim
            a = _gather_tile(x_ptr, col_ptr, w_ptr, start, length, max_len, offs_k, k_mask, dim,
                             HAS_WEIGHT, BLOCK_M, BLOCK_K)
            w_rows = (r * dim + offs_k).to(tl.int64)
            wt = tl.load(wt_ptr + w_rows[:, None] * stride_wk + offs_n[None, :] * stride_wn,
                         mask=k_mask[:, None] & n_mask[None, :], other=0.0)
            if IEEE_DOT:
                acc += tl.dot(a, wt.to(tl.float32), input_precision="ieee")
            else:
                acc += tl.dot(a.to(wt.dtype), wt)
            k0 += BLOCK_K
        r += 1
    tl.store(out_ptr + offs_m[:, None] * out_dim + offs_n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _grad_weight_kernel(x_ptr, rowptr_ptr, col_ptr, w_ptr, grad_ptr, out_ptr, n, dim, out_dim, num_relation,
                        HAS_WEIGHT: tl.constexpr, IEEE_DOT: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_rk = tl.program_id(0)
    pid_n = tl.program_id(1)
    k_blocks = tl.cdiv(dim, BLOCK_K)
    r = pid_rk // k_blocks
    offs_k = (pid_rk % k_blocks) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_mask = offs_k < dim
    n_mask = offs_n < out_dim
    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    m0 = 0
    while m0 < n:
        offs_m = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
        m_mask = offs_m < n
        rows = offs_m * num_relation + r
        start = tl.load(rowptr_ptr + rows, mask=m_mask, other=0)
        length = tl.load(rowptr_ptr + rows + 1, mask=m_mask, other=0) - start
        max_len = tl.max(length, axis=0)
        a = _gather_tile(x_ptr, col_ptr, w_ptr, start, length, max_len, offs_k, k_mask, dim,
                         HAS_WEIGHT, BLOCK_M, BLOCK_K)
        g = tl.load(grad_ptr + offs_m[:, None] * out_dim + offs_n[None, :], mask=m_mask[:, None] & n_mask[None, :],
                    other=0.0)
        if IEEE_DOT:
            acc += tl.dot(tl.trans(a), g.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(tl.trans(a.to(g.dtype)), g)
        m0 += BLOCK_M
    out_rows = (r * dim + offs_k).to(tl.int64)
    tl.store(out_ptr + out_rows[:, None] * out_dim + offs_n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=k_mask[:, None] & n_mask[None, :])


def _dot_mode(dtype: torch.dtype) -> bool:
    # float32 (and float64, computed in float32 here) use exact-float32 dots, like torch's default
    # (no TF32); half types feed tl.dot in their own precision and accumulate in float32.
    if dtype == torch.float64:
        raise TypeError("relational_linear (triton): float64 is not supported by tl.dot; use float32")
    return dtype == torch.float32


@torch.library.custom_op("esmgear_fast::relational_linear_triton", mutates_args=())
def relational_linear_triton(x: torch.Tensor, rowptr: torch.Tensor, col: torch.Tensor, weight: Optional[torch.Tensor],
                             num_relation: int, w_t: torch.Tensor) -> torch.Tensor:
    """Triton version of ``esmgear_fast::relational_linear``: [N, D'] = aggregate(x) @ w_t."""
    ieee = _dot_mode(x.dtype)
    x = x.contiguous()
    n, dim, out_dim = x.size(0), x.size(1), w_t.size(1)
    out = x.new_empty((n, out_dim))
    if n == 0 or out_dim == 0:
        return out
    if dim == 0:
        return out.zero_()
    grid = (triton.cdiv(n, BLOCK_M), triton.cdiv(out_dim, BLOCK_N))
    _linear_kernel[grid](
        x, rowptr.contiguous(), col.contiguous(), weight.contiguous() if weight is not None else x, w_t, out,
        n, dim, out_dim, num_relation, w_t.stride(0), w_t.stride(1),
        HAS_WEIGHT=weight is not None, IEEE_DOT=ieee, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K)
    return out


@torch.library.custom_op("esmgear_fast::relational_linear_grad_weight_triton", mutates_args=())
def relational_linear_grad_weight_triton(x: torch.Tensor, rowptr: torch.Tensor, col: torch.Tensor,
                                         weight: Optional[torch.Tensor], num_relation: int,
                                         grad_out: torch.Tensor) -> torch.Tensor:
    """Triton version of ``esmgear_fast::relational_linear_grad_weight``: [R*D, D'] = A^T @ grad_out."""
    ieee = _dot_mode(x.dtype)
    x, grad_out = x.contiguous(), grad_out.contiguous()
    n, dim, out_dim = x.size(0), x.size(1), grad_out.size(1)
    out = x.new_empty((num_relation * dim, out_dim))
    if out.numel() == 0:
        return out
    if n == 0:
        return out.zero_()
    grid = (num_relation * triton.cdiv(dim, BLOCK_K), triton.cdiv(out_dim, BLOCK_N))
    _grad_weight_kernel[grid](
        x, rowptr.contiguous(), col.contiguous(), weight.contiguous() if weight is not None else x, grad_out, out,
        n, dim, out_dim, num_relation, HAS_WEIGHT=weight is not None, IEEE_DOT=ieee,
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K)
    return out


@relational_linear_triton.register_fake
def _(x, rowptr, col, weight, num_relation, w_t):
    _dot_mode(x.dtype)
    return x.new_empty((x.size(0), w_t.size(1)))


@relational_linear_grad_weight_triton.register_fake
def _(x, rowptr, col, weight, num_relation, grad_out):
    _dot_mode(x.dtype)
    return x.new_empty((num_relation * x.size(1), grad_out.size(1)))
