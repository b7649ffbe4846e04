"""Triton kernels of the CSR relational primitives used by GearNet's message passing.

``relational_csr_spmm_triton``: ``out[row] = sum_{k in [rowptr[row], rowptr[row+1])} w[k] * x[col[k]]``
(the relational aggregation over (target, relation) rows, and its gradient w.r.t. x over the
transposed CSR); ``relational_csr_sddmm_triton``: ``out[k] = <a[row[k]], b[col[k]]>`` (the gradient
w.r.t. the edge weights). Both accumulate in float32 and return the input dtype. Every output
element is written by one program (no atomics): results are deterministic.

Registered with ``torch.library.custom_op`` plus fake kernels, so they compose with
``torch.compile`` (as opaque calls; ``triton_op``'s traceable launch fails under the CPU
interpreter used by the tests, e.g. in opcheck's fake-tensor runs); the differentiable ops built on them are in ``esmgear_fast/ops/relational_csr.py``.
On CPU they run only under ``TRITON_INTERPRET=1`` (set before triton is imported).
"""
from typing import Optional

import torch
import triton
import triton.language as tl

BLOCK_ROWS = 16
BLOCK_EDGES = 32


def _block(n: int, cap: int) -> int:
    return max(16, min(cap, triton.next_power_of_2(max(n, 1))))


@triton.jit
def _spmm_kernel(x_ptr, rowptr_ptr, col_ptr, w_ptr, out_ptr, num_rows, dim,
                 HAS_WEIGHT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_d = tl.program_id(1)
    rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    row_mask = rows < num_rows
    d_mask = offs_d < dim
    start = tl.load(rowptr_ptr + rows, mask=row_mask, other=0)
    length = tl.load(rowptr_ptr + rows + 1, mask=row_mask, other=0) - start
    # Rows of one block have different in-degrees: step through the longest, masking the others.
    max_len = tl.max(length, axis=0)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    # Loops are while loops: triton 3.6's interpreter fails on range() with runtime bounds.
    t = 0
    while t < max_len:
        valid = t < length
        k = start + t
        src = tl.load(col_ptr + k, mask=valid, other=0)
        vals = tl.load(x_ptr + src[:, None] * dim + offs_d[None, :], mask=valid[:, None] & d_mask[None, :],
                       other=0.0).to(tl.float32)
        if HAS_WEIGHT:
            vals = vals * tl.load(w_ptr + k, mask=valid, other=0.0).to(tl.float32)[:, None]
        acc += vals
        t += 1
    tl.store(out_ptr + rows[:, None] * dim + offs_d[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=row_mask[:, None] & d_mask[None, :])


@triton.jit
def _sddmm_kernel(a_ptr, b_ptr, row_ptr, col_ptr, out_ptr, nnz, dim,
                  BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr):
    offs_e = tl.program_id(0).to(tl.int64) * BLOCK_E + tl.arange(0, BLOCK_E)
    e_mask = offs_e < nnz
    row = tl.load(row_ptr + offs_e, mask=e_mask, other=0)
    col = tl.load(col_ptr + offs_e, mask=e_mask, other=0)
    acc = tl.zeros((BLOCK_E,), dtype=tl.float32)
    d0 = 0
    while d0 < dim:
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask = e_mask[:, None] & (offs_d < dim)[None, :]
        a = tl.load(a_ptr + row[:, None] * dim + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + col[:, None] * dim + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
        acc += tl.sum(a * b, axis=1)
        d0 += BLOCK_D
    tl.store(out_ptr + offs_e, acc.to(out_ptr.dtype.element_ty), mask=e_mask)


@torch.library.custom_op("esmgear_fast::relational_csr_spmm_triton", mutates_args=())
def relational_csr_spmm_triton(x: torch.Tensor, rowptr: torch.Tensor, col: torch.Tensor,
                               weight: Optional[torch.Tensor]) -> torch.Tensor:
    """Triton version of ``esmgear_fast::relational_csr_spmm``: [rows, D] from x [N, D]."""
    x = x.contiguous()
    num_rows, dim = rowptr.numel() - 1, x.size(1)
    out = x.new_empty((num_rows, dim))
    if num_rows == 0 or dim == 0:
        return out
    block_d = _block(dim, 128)
    grid = (triton.cdiv(num_rows, BLOCK_ROWS), triton.cdiv(dim, block_d))
    _spmm_kernel[grid](
        x, rowptr.contiguous(), col.contiguous(), weight.contiguous() if weight is not None else x, out,
        num_rows, dim, HAS_WEIGHT=weight is not None, BLOCK_M=BLOCK_ROWS, BLOCK_D=block_d)
    return out


@torch.library.custom_op("esmgear_fast::relational_csr_sddmm_triton", mutates_args=())
def relational_csr_sddmm_triton(a: torch.Tensor, b: torch.Tensor, row: torch.Tensor,
                                col: torch.Tensor) -> torch.Tensor:
    """Triton version of ``esmgear_fast::relational_csr_sddmm``: [nnz] row-wise dot products."""
    a, b = a.contiguous(), b.contiguous()
    nnz, dim = row.numel(), a.size(1)
    out = a.new_empty((nnz,))
    if nnz == 0:
        return out
    grid = (triton.cdiv(nnz, BLOCK_EDGES),)
    _sddmm_kernel[grid](a, b, row.contiguous(), col.contiguous(), out, nnz, dim,
                                     BLOCK_E=BLOCK_EDGES, BLOCK_D=_block(dim, 64))
    return out


@relational_csr_spmm_triton.register_fake
def _(x, rowptr, col, weight):
    return x.new_empty((rowptr.size(0) - 1, x.size(1)))


@relational_csr_sddmm_triton.register_fake
def _(a, b, row, col):
    return a.new_empty((row.size(0),))
