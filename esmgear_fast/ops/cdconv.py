"""Continuous-discrete convolution (CDConv) as a functional op: validation, backend choice, fused path.

Backends: "reference" (:func:`esmgear_fast.reference.cdconv`, materialises [E, K*C] messages) and the
fused ones, which split the op in two:

1. the smoothed per-edge kernel weights ``kw`` [E, K] (geometry + per-offset WeightNet + smooth factor),
   computed with plain differentiable PyTorch (small: K values per edge), then
2. ``esmgear_fast::cdconv_aggregate`` (C++ on CPU, "extension") or the Triton kernel ("triton"):
   edges sorted by target (CSR), ``out_i = (sum_e kw_e (x) x_j) @ W`` computed per tile of targets
   without the [E, K*C] message tensor; its backward gives grad x, grad kw (-> WeightNet parameters,
   pos and frame by autograd) and grad W.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from .. import _extension  # noqa: F401  (loads the compiled kernels)
from .. import reference
from ..backend import resolve
from ..reference.cdconv import LEAKY_SLOPE, compute_dtype, edge_features
from ._checks import check_index_range

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INDEX_DTYPES = (torch.int64, torch.int32)
WEIGHTNET_INPUT_DIM = 7


def _backends_for(device: torch.device):
    # The C++ kernel is CPU-only (no CUDA kernel for this op): on GPUs the fused backend is Triton.
    if device.type == "cpu":
        return ("extension", "triton", "reference")
    return ("triton", "reference")


@torch.library.register_fake("esmgear_fast::cdconv_aggregate")
def _fake(x, kernel_weight, rowptr, source, weight):
    torch._check(x.dim() == 2, lambda: "cdconv_aggregate: x must have shape [N, C]")
    torch._check(kernel_weight.dim() == 2, lambda: "cdconv_aggregate: kernel_weight must have shape [E, K]")
    out_dim = weight.size(1) if weight is not None else kernel_weight.size(1) * x.size(1)
    return x.new_empty((x.size(0), out_dim))


@torch.library.register_fake("esmgear_fast::cdconv_aggregate_backward")
def _fake_backward(grad_out, x, kernel_weight, rowptr, source, weight, need_x, need_kw, need_w):
    n, channels = x.shape
    num_edges, kernel_dim = kernel_weight.shape
    need_w = need_w and weight is not None
    out_dim = weight.size(1) if weight is not None else kernel_dim * channels
    w_dtype = weight.dtype if weight is not None else kernel_weight.dtype
    grad_x = x.new_empty((n if need_x else 0, channels))
    grad_kw = kernel_weight.new_empty((num_edges if need_kw else 0, kernel_dim))
    grad_w = kernel_weight.new_empty((kernel_dim * channels if need_w else 0, out_dim), dtype=w_dtype)
    return grad_x, grad_kw, grad_w


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
    grad_x, grad_kw, grad_w = torch.ops.esmgear_fast.cdconv_aggregate_backward(
        grad_out.contiguous(), x, kernel_weight, rowptr, source, weight, need_x, need_kw, need_w
    )
    return (grad_x if need_x else None), (grad_kw if need_kw else None), None, None, (grad_w if need_w else None)


torch.library.register_autograd("esmgear_fast::cdconv_aggregate", _backward, setup_context=_setup_context)


def sort_edges_by_target(edge_index: torch.Tensor, num_nodes: int):
    """(order [E], rowptr [N+1], source [E]): edges stably sorted by target, CSR row pointers, sources.

    Without data-dependent shapes (searchsorted instead of bincount) so it traces under torch.compile,
    and without index_add (whose CPU kernel serialises badly when many edges hit few rows).
    """
    target = edge_index[1]
    order = torch.argsort(target, stable=True)
    boundaries = torch.arange(num_nodes + 1, dtype=target.dtype, device=target.device)
    rowptr = torch.searchsorted(target.index_select(0, order), boundaries)
    return order, rowptr, edge_index[0].index_select(0, order)


def weightnet_dense(features, weightnet_index, weights, biases, seq_cutoff: int) -> torch.Tensor:
    """The per-offset WeightNet as dense matmuls: same values as :func:`reference.cdconv.weightnet`.

    Instead of gathering a [in, out] matrix per edge (the original's ``index_select``; its backward is an
    index_add of [E, in, out] into only ``l`` rows, which is slow on CPU), each layer places the edge's
    input into the block of its offset, ``expanded[e, o*in + p] = [o == index_e] h[e, p]`` ([E, l*in]),
    and multiplies by all offsets' weights stacked, ``Ws.reshape(l*in, out)``: one GEMM forward and
    GEMMs backward (the gradient w.r.t. the weights sums per offset automatically), compile friendly.
    """
    onehot = torch.nn.functional.one_hot(weightnet_index, seq_cutoff).to(features.dtype)  # [E, l]
    hidden = features
    for w, b in zip(weights, biases):
        num_offsets, fan_in, fan_out = w.shape
        expanded = (onehot.unsqueeze(2) * hidden.unsqueeze(1)).reshape(-1, num_offsets * fan_in)
        pre = expanded @ w.to(features.dtype).reshape(num_offsets * fan_in, fan_out)
        hidden = torch.nn.functional.leaky_relu(pre + onehot @ b.to(features.dtype), LEAKY_SLOPE)
    return hidden


def kernel_weights(pos, frame, seq, edge_index, weights, biases, radius, seq_cutoff, dtype) -> torch.Tensor:
    """Smoothed per-edge kernel [E, K] (same values as :func:`reference.cdconv_kernel_weights`)."""
    features, index, smooth = edge_features(
        pos.to(dtype), frame.to(dtype), seq, edge_index, radius, seq_cutoff
    )
    return weightnet_dense(features, index, weights, biases, seq_cutoff) * smooth.unsqueeze(-1)


def _fused(x, pos, frame, seq, edge_index, weights, biases, weight, radius, seq_cutoff, aggregate):
    order, rowptr, source = sort_edges_by_target(edge_index, x.size(0))
    # kernel weights computed directly in target order: no gradient has to flow back through a permutation
    sorted_edges = edge_index.index_select(1, order)
    kernel_weight = kernel_weights(
        pos, frame, seq, sorted_edges, weights, biases, radius, seq_cutoff, compute_dtype(x.dtype)
    )
    return aggregate(x, kernel_weight, rowptr, source, weight)


def _shape(t) -> str:
    return str(list(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def _check_inputs(x, pos, frame, seq, edge_index, weights, biases, weight, radius, seq_cutoff):
    op = "cdconv"
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"{op}: x must be a tensor of shape [N, C], got {_shape(x)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    n, channels = x.shape
    if n == 0:
        raise ValueError(f"{op}: empty graph (x has 0 nodes)")
    if channels == 0:
        raise ValueError(f"{op}: x has 0 channels")
    if not isinstance(pos, torch.Tensor) or pos.shape != (n, 3):
        raise ValueError(f"{op}: pos must have shape [N, 3] = [{n}, 3], got {_shape(pos)}")
    if not isinstance(frame, torch.Tensor) or frame.shape != (n, 3, 3):
        raise ValueError(f"{op}: frame must have shape [N, 3, 3] = [{n}, 3, 3], got {_shape(frame)}")
    if not isinstance(seq, torch.Tensor) or seq.shape != (n,):
        raise ValueError(f"{op}: seq must have shape [N] = [{n}] (integer residue numbers), got {_shape(seq)}")
    if not isinstance(edge_index, torch.Tensor) or edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"{op}: edge_index must have shape [2, E], got {_shape(edge_index)}")
    for name, t in (("pos", pos), ("frame", frame)):
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{op}: {name} must be a floating point tensor, got {t.dtype}")
    for name, t in (("seq", seq), ("edge_index", edge_index)):
        if t.dtype not in _INDEX_DTYPES:
            raise TypeError(f"{op}: {name} must be int64 (or int32), got {t.dtype}")

    if isinstance(weights, torch.Tensor) or isinstance(biases, torch.Tensor):
        raise TypeError(f"{op}: weightnet_weights and weightnet_biases must be sequences of tensors (one per layer)")
    weights, biases = list(weights), list(biases)
    if len(weights) == 0 or len(weights) != len(biases):
        raise ValueError(
            f"{op}: need one weightnet weight and one bias per layer (>= 1 layer), got {len(weights)} weights "
            f"and {len(biases)} biases"
        )
    if isinstance(seq_cutoff, bool) or not isinstance(seq_cutoff, int):
        raise TypeError(f"{op}: seq_cutoff must be an int, got {type(seq_cutoff).__name__}")
    if seq_cutoff < 3 or seq_cutoff % 2 == 0:
        # The original indexes clamp(dseq, -l//2, l//2) + l//2, i.e. 2*(l//2)+1 WeightNets: only an odd
        # l >= 3 has exactly l of them (and l//2 > 0 for the smooth factor).
        raise ValueError(f"{op}: seq_cutoff must be an odd int >= 3 (one WeightNet per offset), got {seq_cutoff}")
    in_dim = WEIGHTNET_INPUT_DIM
    for layer, (w, b) in enumerate(zip(weights, biases)):
        if not isinstance(w, torch.Tensor) or w.dim() != 3 or w.shape[0] != seq_cutoff or w.shape[1] != in_dim:
            raise ValueError(
                f"{op}: weightnet_weights[{layer}] must have shape [seq_cutoff, in, out] = "
                f"[{seq_cutoff}, {in_dim}, out], got {_shape(w)}"
            )
        if not isinstance(b, torch.Tensor) or b.shape != (seq_cutoff, w.shape[2]):
            raise ValueError(
                f"{op}: weightnet_biases[{layer}] must have shape [{seq_cutoff}, {w.shape[2]}], got {_shape(b)}"
            )
        for name, t in ((f"weightnet_weights[{layer}]", w), (f"weightnet_biases[{layer}]", b)):
            if t.dtype not in _FLOAT_DTYPES:
                raise TypeError(f"{op}: {name} must be a floating point tensor, got {t.dtype}")
            if t.device != x.device:
                raise ValueError(f"{op}: {name} is on {t.device} but x is on {x.device}")
        in_dim = w.shape[2]
    kernel_dim = in_dim
    if weight is not None:
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[0] != kernel_dim * channels:
            raise ValueError(
                f"{op}: weight must have shape [K*C, C_out] = [{kernel_dim * channels}, C_out], got {_shape(weight)}"
            )
        if weight.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{op}: weight must be a floating point tensor, got {weight.dtype}")
    for name, t in (("pos", pos), ("frame", frame), ("seq", seq), ("edge_index", edge_index), ("weight", weight)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{op}: {name} is on {t.device} but x is on {x.device}")
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not math.isfinite(radius) or radius <= 0:
        raise ValueError(f"{op}: radius must be a finite number > 0, got {radius!r}")

    check_index_range(op, "edge_index", edge_index, n)
    if not torch.compiler.is_compiling():
        for name, t in (("x", x), ("pos", pos), ("frame", frame)):
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{op}: {name} contains NaN or infinite values")
    return weights, biases, kernel_dim


def cdconv(
    x: torch.Tensor,
    pos: torch.Tensor,
    frame: torch.Tensor,
    seq: torch.Tensor,
    edge_index: torch.Tensor,
    weightnet_weights: Sequence[torch.Tensor],
    weightnet_biases: Sequence[torch.Tensor],
    weight: Optional[torch.Tensor],
    radius: float,
    seq_cutoff: int,
    backend: Optional[str] = None,
) -> torch.Tensor:
    r"""Continuous-discrete convolution of CDConv (Fan et al., ICLR 2023), same semantics as the original layer.

    For every edge e = (j -> i) with offset ``delta = pos_j - pos_i``, ``d = |delta|``:

    .. math::
        f_e &= [\,F_i \tfrac{\delta}{d + 10^{-9}},\ \textstyle\sum_b F_i \odot F_j,\ d\,] \in \mathbb{R}^7,
        \qquad o_e = \mathrm{clamp}(s_j - s_i, -h, h),\ h = \lfloor l/2 \rfloor \\
        k_e &= \mathrm{WeightNet}_{o_e + h}(f_e) \in \mathbb{R}^K, \qquad
        \sigma_e = \tfrac12 - \tfrac12 \tanh\!\big(16\,\tfrac{d}{r}\,\tfrac{|o_e|}{h} - 14\big) \\
        \mathrm{out}_i &= \Big(\sum_{e=(j\to i)} \mathrm{vec}\big((\sigma_e k_e) \otimes x_j\big)\Big) W,
        \qquad \mathrm{vec}(\cdot)[kC + c] = (\sigma_e k_e)[k]\, x_j[c]

    WeightNet number ``o + h`` is an MLP whose every layer (the last one too) is
    ``h = LeakyReLU_{0.2}(h @ Ws[layer][o + h] + bs[layer][o + h])``.

    Args:
        x: [N, C] node features (float32/float64/float16/bfloat16; half precision computes in float32).
        pos: [N, 3] C-alpha coordinates (Angstrom).
        frame: [N, 3, 3] per-residue orientation frames (rows are the frame axes).
        seq: [N] int64 residue numbers (gaps allowed; offsets beyond ``seq_cutoff // 2`` are clamped).
        edge_index: [2, E] int64 edges, row 0 the source j, row 1 the target i (the original uses a radius
            graph without a neighbour cap plus self loops; any edge list is accepted).
        weightnet_weights: per layer ``[l, in, K_layer]`` (``in`` = 7 for the first layer).
        weightnet_biases: per layer ``[l, K_layer]``.
        weight: ``[K*C, C_out]`` (K = last WeightNet width) or None to return the ``[N, K*C]`` aggregate.
        radius: the graph radius r used in the smooth factor.
        seq_cutoff: l, odd >= 3: the number of per-offset WeightNets.
        backend: "auto" (CPU: the C++ kernel; GPU: Triton), "extension" (C++, CPU only), "triton"
            (GPU, or CPU under ``TRITON_INTERPRET=1``) or "reference"; ``None`` uses the global default.

    Returns:
        [N, C_out] (or [N, K*C]) in x's dtype, differentiable w.r.t. x, the WeightNet parameters, weight,
        pos and frame (the encoder needs no position/frame gradients, but they are exact: they flow
        through the plain-PyTorch kernel-weight part of every backend).

    Memory (fused backends): nothing of size [E, K*C]. The C++ kernel works on tiles of targets (a
    [tile, K*C] buffer of ~16 MB, recomputed in the backward instead of stored); the Triton backend
    stores the [N, K*C] aggregate (E/N times smaller than the reference's messages) and multiplies it by
    ``weight`` with one matmul. The kernel-weight part keeps O(E * l * K) activations for autograd.
    Determinism: the C++ kernel has no atomics; its results do not depend on the thread count.

    Raises:
        ValueError / TypeError naming the offending argument for wrong shapes, dtypes or devices, an empty
        graph, NaN/inf inputs, an edge index outside ``[0, N)`` or an invalid ``seq_cutoff``.
    """
    weightnet_weights, weightnet_biases, _ = _check_inputs(
        x, pos, frame, seq, edge_index, weightnet_weights, weightnet_biases, weight, radius, seq_cutoff
    )
    chosen = resolve("cdconv", backend, x.device, _backends_for(x.device))
    edge_index = edge_index.long()
    seq = seq.long()
    if chosen == "reference":
        return reference.cdconv(
            x, pos, frame, seq, edge_index, weightnet_weights, weightnet_biases, weight, float(radius), seq_cutoff
        )
    if chosen == "extension":
        aggregate = torch.ops.esmgear_fast.cdconv_aggregate
    else:
        from ..kernels.cdconv import cdconv_aggregate_triton as aggregate
    return _fused(
        x, pos, frame, seq, edge_index, weightnet_weights, weightnet_biases, weight, float(radius), seq_cutoff,
        aggregate,
    )
