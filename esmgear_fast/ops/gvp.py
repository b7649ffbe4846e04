"""Geometric Vector Perceptron ops: one GVP, and GVPConv message passing with mean aggregation.

The definition is :mod:`esmgear_fast.reference.gvp` (gvp-pytorch semantics). This module validates
inputs and dispatches to a backend (see :mod:`esmgear_fast.backend`).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import _extension  # noqa: F401  (loads the compiled ops)
from .. import reference
from ..backend import BackendUnavailableError, resolve
from ..reference.gvp import ACTIVATIONS, GVPWeights
from ._checks import check_index_range

__all__ = ["GVPWeights", "gvp", "gvp_conv_message"]

GVP_BACKENDS = ("reference",)
# auto prefers the extension everywhere: the fused Triton kernel has only been run under the CPU
# interpreter so far; it is chosen explicitly (backend="triton") until it is benchmarked on a GPU.
CONV_BACKENDS = ("extension", "triton", "reference")
ACTIVATION_CODES = {None: 0, "relu": 1, "sigmoid": 2, "silu": 3}  # as in csrc/ops/gvp.cpp
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _shape(t) -> str:
    return str(list(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def _check_features(op: str, s, v, n_name: str, s_name: str, v_name: str, rows: Optional[int] = None,
                    ch: str = "i") -> Tuple[int, int]:
    """Checks s [n, s<ch>] (n == rows when given) and v [n, v<ch>, 3] (or None); returns (s<ch>, v<ch>)."""
    if not isinstance(s, torch.Tensor) or s.dim() != 2 or (rows is not None and s.size(0) != rows):
        n = n_name if rows is None else f"{n_name}, s{ch}] = [{rows}"
        raise ValueError(f"{op}: {s_name} must be a tensor of shape [{n}, s{ch}], got {_shape(s)}")
    if s.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: {s_name} must be float16, bfloat16, float32 or float64, got {s.dtype}")
    if v is None:
        return s.size(1), 0
    if not isinstance(v, torch.Tensor) or v.dim() != 3 or v.size(2) != 3 or v.size(0) != s.size(0):
        raise ValueError(
            f"{op}: {v_name} must be a tensor of shape [{n_name}, v{ch}, 3] = [{s.size(0)}, v{ch}, 3], "
            f"got {_shape(v)}"
        )
    if v.dtype != s.dtype:
        raise TypeError(f"{op}: {v_name} has dtype {v.dtype} but {s_name} has {s.dtype}")
    if v.device != s.device:
        raise ValueError(f"{op}: {v_name} is on {v.device} but {s_name} is on {s.device}")
    return s.size(1), v.size(1)


def _check_weights(op: str, w, si: int, vi: int, dtype: torch.dtype, device: torch.device, name: str = "w"):
    """Checks one GVPWeights against input sizes (si, vi); returns its output sizes (so, vo)."""
    if not isinstance(w, GVPWeights):
        raise TypeError(f"{op}: {name} must be a GVPWeights, got {type(w).__name__}")
    for field in ("scalar_act", "vector_act"):
        if getattr(w, field) not in ACTIVATIONS:
            raise ValueError(f"{op}: {name}.{field} must be one of {ACTIVATIONS}, got {getattr(w, field)!r}")
    for field in ("wh", "ws_weight", "ws_bias", "wv", "wsv_weight", "wsv_bias"):
        t = getattr(w, field)
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name}.{field} must be a tensor or None, got {type(t).__name__}")
        if t.dtype != dtype:
            raise TypeError(f"{op}: {name}.{field} has dtype {t.dtype} but the features have {dtype}")
        if t.device != device:
            raise ValueError(f"{op}: {name}.{field} is on {t.device} but the features are on {device}")
    if vi:
        if w.wh is None or w.wh.dim() != 2 or w.wh.size(1) != vi:
            raise ValueError(f"{op}: {name}.wh must have shape [h, vi] = [h, {vi}], got {_shape(w.wh)}")
        h = w.wh.size(0)
    else:
        if w.wh is not None:
            raise ValueError(f"{op}: {name}.wh must be None when there are no vector inputs (vi == 0)")
        h = 0
    if not isinstance(w.ws_weight, torch.Tensor) or w.ws_weight.dim() != 2 or w.ws_weight.size(1) != si + h:
        raise ValueError(
            f"{op}: {name}.ws_weight must have shape [so, si + h] = [so, {si + h}], got {_shape(w.ws_weight)}"
        )
    so = w.ws_weight.size(0)
    if not isinstance(w.ws_bias, torch.Tensor) or tuple(w.ws_bias.shape) != (so,):
        raise ValueError(f"{op}: {name}.ws_bias must have shape [so] = [{so}], got {_shape(w.ws_bias)}")
    if w.wv is None:
        vo = 0
    else:
        # with vi == 0, h == 0 and wv is an empty [vo, 0] tensor that only carries vo (V' = zeros)
        if w.wv.dim() != 2 or w.wv.size(1) != h:
            raise ValueError(f"{op}: {name}.wv must have shape [vo, h] = [vo, {h}], got {_shape(w.wv)}")
        vo = w.wv.size(0)
    if w.vector_gate and vo:
        if w.wsv_weight is None or tuple(w.wsv_weight.shape) != (vo, so):
            raise ValueError(
                f"{op}: {name}.wsv_weight must have shape [vo, so] = [{vo}, {so}] with vector_gate, "
                f"got {_shape(w.wsv_weight)}"
            )
        if w.wsv_bias is None or tuple(w.wsv_bias.shape) != (vo,):
            raise ValueError(f"{op}: {name}.wsv_bias must have shape [vo] = [{vo}], got {_shape(w.wsv_bias)}")
    elif w.wsv_weight is not None or w.wsv_bias is not None:
        raise ValueError(f"{op}: {name}.wsv_weight/wsv_bias must be None unless vector_gate is on and vo > 0")
    return so, vo


def gvp(
    s: Tensor, v: Optional[Tensor], w: GVPWeights, backend: Optional[str] = None
) -> Tuple[Tensor, Optional[Tensor]]:
    r"""One Geometric Vector Perceptron (gvp-pytorch ``GVP``) on ``(s [n, si], V [n, vi, 3])``.

    .. math::
        V_h = W_h V,\quad s' = \mathrm{act}_s(W_s [s, \|V_h\|] + b_s),\quad
        V' = (W_v V_h) \odot \text{gate}

    with ``\|x\| = \sqrt{\max(\sum_{xyz} x^2, 10^{-8})}`` and the gate either
    ``\sigma(W_{sv} \mathrm{act}_v(s'_{pre}) + b_{sv})`` (``vector_gate``) or ``\mathrm{act}_v(\|V'\|)``.
    See :mod:`esmgear_fast.reference.gvp` for the full definition.

    Args:
        s: [n, si] scalar features (float16/bfloat16/float32/float64; half precision computes in float32).
        v: [n, vi, 3] vector features of s's dtype and device, or None when ``vi == 0``.
        w: the :class:`GVPWeights` (same dtype and device as ``s``).
        backend: "auto" or "reference"; ``None`` uses the global default.

    Returns:
        ``(s' [n, so], V' [n, vo, 3])``, V' None when ``vo == 0`` (zeros when ``vi == 0 < vo``).
        Differentiable w.r.t. features and weights.

    Raises:
        ValueError / TypeError naming the offending argument for wrong shapes, dtypes or devices.
    """
    op = "gvp"
    si, vi = _check_features(op, s, v, "n", "s", "v")
    _check_weights(op, w, si, vi, s.dtype, s.device)
    resolve(op, backend, s.device, GVP_BACKENDS)
    return reference.gvp(s, v, w)


def check_conv_inputs(op, s, v, edge_s, edge_v, edge_index, gvps, num_nodes):
    """Validates GVPConv inputs; returns (num_nodes, edge_index as int64)."""
    si, vi = _check_features(op, s, v, "N", "s", "v")
    if not isinstance(edge_index, torch.Tensor) or edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"{op}: edge_index must have shape [2, E], got {_shape(edge_index)}")
    if edge_index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{op}: edge_index must be int64 (or int32), got {edge_index.dtype}")
    if edge_index.device != s.device:
        raise ValueError(f"{op}: edge_index is on {edge_index.device} but s is on {s.device}")
    num_edges = edge_index.size(1)
    se, ve = _check_features(op, edge_s, edge_v, "E", "edge_s", "edge_v", rows=num_edges, ch="e")
    if edge_s.dtype != s.dtype or edge_s.device != s.device:
        raise TypeError(
            f"{op}: edge_s ({edge_s.dtype} on {edge_s.device}) must match s ({s.dtype} on {s.device})"
        )
    if isinstance(gvps, GVPWeights) or not isinstance(gvps, (list, tuple)) or len(gvps) == 0:
        raise ValueError(f"{op}: gvps must be a non-empty list or tuple of GVPWeights")
    dims = (2 * si + se, 2 * vi + ve)
    for k, w in enumerate(gvps):
        dims = _check_weights(op, w, dims[0], dims[1], s.dtype, s.device, name=f"gvps[{k}]")
    n = s.size(0) if num_nodes is None else int(num_nodes)
    if n != s.size(0):
        raise ValueError(f"{op}: num_nodes={n} but s has {s.size(0)} rows")
    check_index_range(op, "edge_index", edge_index, n)
    return n, edge_index.long()


def gvp_conv_message(
    s: Tensor,
    v: Optional[Tensor],
    edge_s: Tensor,
    edge_v: Optional[Tensor],
    edge_index: Tensor,
    gvps: Sequence[GVPWeights],
    num_nodes: Optional[int] = None,
    backend: Optional[str] = None,
    csr: Optional[Tuple[Tensor, Tensor]] = None,
) -> Tuple[Tensor, Optional[Tensor]]:
    r"""GVPConv message passing (gvp-pytorch ``GVPConv``, ``aggr="mean"``).

    For every edge j -> i (``edge_index[0]`` = source j, ``edge_index[1]`` = target i) the message is
    the GVP stack ``gvps`` applied to ``([s_j, e_s, s_i], [V_j, e_V, V_i])``; node i gets the mean of
    its incoming messages (zeros without incoming edges).

    Args:
        s: [N, si] node scalars; v: [N, vi, 3] node vectors or None.
        edge_s: [E, se] edge scalars; edge_v: [E, ve, 3] edge vectors or None.
        edge_index: [2, E] int64 (or int32) with entries in ``[0, N)``.
        gvps: the message GVPs; the first takes ``(2 si + se, 2 vi + ve)`` inputs, each the previous
            one's outputs.
        num_nodes: N (defaults to ``s.size(0)``; must equal it).
        backend: "auto", "extension", "triton" or "reference"; ``None`` uses the global default
            (auto picks "extension": the Triton kernel is opt-in until benchmarked on a GPU).
            "extension" is the C++ op ``esmgear_fast::gvp_conv_message`` (ATen, any device,
            autograd through ATen): the first GVP's products on the node features run on N rows
            instead of E (see ``csrc/ops/gvp.cpp``). "triton" is the fused kernel of
            ``esmgear_fast.kernels.gvp_conv`` (messages never stored per edge; needs h > 0 and
            vo > 0 in every GVP, at most 3 GVPs, no bfloat16 under the CPU interpreter).
        csr: optional ``(rowptr, perm)`` from ``esmgear_fast.kernels.gvp_conv.target_csr`` (the
            edges sorted by target), used by the triton backend; pass it to reuse one sort across
            layers of the same graph. Computed when omitted.

    Returns:
        ``(s [N, so], V [N, vo, 3] or None)`` with the last GVP's output sizes. Differentiable
        w.r.t. node and edge features and all weights.

    Raises:
        ValueError / TypeError naming the problem for wrong shapes, dtypes, devices, inconsistent
        GVP sizes or edge indices outside ``[0, N)``.
    """
    op = "gvp_conv_message"
    n, edge_index = check_conv_inputs(op, s, v, edge_s, edge_v, edge_index, gvps, num_nodes)
    name = resolve(op, backend, s.device, CONV_BACKENDS)
    if name == "reference":
        return reference.gvp_conv_message(s, v, edge_s, edge_v, edge_index, list(gvps), n)
    params, activations, gates = pack_gvps(gvps)
    if name == "triton":
        _check_triton_supported(s, gvps)
        from esmgear_fast.kernels import gvp_conv as triton_gvp_conv

        if csr is None:
            csr = triton_gvp_conv.target_csr(edge_index, n)
        rowptr, perm = csr
        if tuple(rowptr.shape) != (n + 1,) or tuple(perm.shape) != (edge_index.size(1),):
            raise ValueError(
                f"{op}: csr must be (rowptr [N + 1] = [{n + 1}], perm [E] = [{edge_index.size(1)}]) from "
                f"target_csr(edge_index, N), got {_shape(rowptr)} and {_shape(perm)}"
            )
        present = [s.new_empty(0) if p is None else p for p in params]  # the op takes Tensor[]
        return triton_gvp_conv.gvp_conv_message_triton(
            s, v, edge_s, edge_v, edge_index, rowptr, perm, present, activations, gates, n
        )
    out_s, out_v = torch.ops.esmgear_fast.gvp_conv_message(
        s, v, edge_s, edge_v, edge_index, params, activations, gates, n
    )
    return out_s, (out_v if gvps[-1].wv is not None else None)


def _check_triton_supported(s, gvps):
    if len(gvps) > 3:
        raise BackendUnavailableError(f"gvp_conv_message: the triton backend runs at most 3 GVPs, got {len(gvps)}")
    for k, w in enumerate(gvps):
        if w.wh is None or w.wv is None or w.wh.size(0) == 0 or w.wv.size(0) == 0:
            raise BackendUnavailableError(
                f"gvp_conv_message: the triton backend needs vector inputs and outputs in every GVP "
                f"(gvps[{k}] has none); use backend='extension'"
            )
    if s.device.type == "cpu" and s.dtype == torch.bfloat16:
        raise BackendUnavailableError(
            "gvp_conv_message: bfloat16 is not supported by the Triton CPU interpreter; use float16/float32"
        )


def pack_gvps(gvps: Sequence[GVPWeights]):
    """Flattens GVPWeights into the (params, activation codes, vector gate flags) of the C++ schema."""
    params, activations, gates = [], [], []
    for w in gvps:
        params += [w.wh, w.ws_weight, w.ws_bias, w.wv, w.wsv_weight, w.wsv_bias]
        activations += [ACTIVATION_CODES[w.scalar_act], ACTIVATION_CODES[w.vector_act]]
        gates.append(int(bool(w.vector_gate)))
    return params, activations, gates
