r"""Reference Geometric Vector Perceptron (GVP) and GVP-GNN message passing (Jing et al. 2021).

Semantics are those of drorlab/gvp-pytorch (``GVP``, ``GVPConv`` with mean aggregation), written
as plain functions of explicit weights so every backend can be checked against them.

Shapes: ``s`` [n, si] scalar channels, ``V`` [n, vi, 3] vector channels (xyz last). One GVP:

.. math::
    V_h &= W_h V \quad ([n, h, 3],\ \text{linear over the channel axis, no bias}) \\
    \|V_h\| &= \sqrt{\max(\textstyle\sum_{xyz} V_h^2,\ 10^{-8})} \quad ([n, h]) \\
    s' &= W_s [s, \|V_h\|] + b_s \\
    V' &= W_v V_h \quad ([n, v_o, 3],\ \text{no bias}) \\
    V' &\leftarrow V' \odot \sigma(W_{sv}\, \mathrm{act}_v(s') + b_{sv}) \quad \text{(vector gate; } s'
        \text{ before the scalar activation, } \mathrm{act}_v = \mathrm{id} \text{ when None)} \\
    V' &\leftarrow V' \odot \mathrm{act}_v(\|V'\|) \quad \text{(no gate, when } \mathrm{act}_v \text{ is not None)} \\
    s' &\leftarrow \mathrm{act}_s(s')

With ``vi == 0``: ``s' = act_s(W_s s + b_s)`` and ``V'`` is zeros (no gate).
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

ACTIVATIONS = ("relu", "sigmoid", "silu", None)
NORM_EPS = 1e-8  # gvp-pytorch's _norm_no_nan clamps the SQUARED norm at this value


class GVPWeights(NamedTuple):
    """Parameters of one GVP.

    ``wh`` [h, vi] (None if vi == 0); ``ws_weight`` [so, si + h] (h = 0 if vi == 0, scalar inputs
    first, then the h vector norms); ``ws_bias`` [so]; ``wv`` [vo, h] (None if vo == 0; an empty
    [vo, 0] tensor when vi == 0 < vo, whose outputs are zeros);
    ``wsv_weight`` [vo, so] and ``wsv_bias`` [vo] when ``vector_gate`` (else None);
    ``scalar_act`` / ``vector_act`` in ("relu", "sigmoid", "silu", None).
    """

    wh: Optional[Tensor]
    ws_weight: Tensor
    ws_bias: Tensor
    wv: Optional[Tensor]
    wsv_weight: Optional[Tensor]
    wsv_bias: Optional[Tensor]
    scalar_act: Optional[str]
    vector_act: Optional[str]
    vector_gate: bool


def activation(x: Tensor, name: Optional[str]) -> Tensor:
    if name is None:
        return x
    if name == "relu":
        return torch.relu(x)
    if name == "sigmoid":
        return torch.sigmoid(x)
    if name == "silu":
        return F.silu(x)
    raise ValueError(f"unknown activation {name!r}; choose one of {ACTIVATIONS}")


def clamped_norm(v: Tensor, dim: int = -1, keepdim: bool = False) -> Tensor:
    """``sqrt(max(sum(v^2), 1e-8))``: the norm of gvp-pytorch, never zero so its gradient is finite."""
    return torch.sqrt(torch.clamp(torch.sum(v * v, dim=dim, keepdim=keepdim), min=NORM_EPS))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def gvp(s: Tensor, v: Optional[Tensor], w: GVPWeights) -> Tuple[Tensor, Optional[Tensor]]:
    """One GVP on ``(s [n, si], V [n, vi, 3] or None)``; returns ``(s' [n, so], V' [n, vo, 3] or None)``.

    Half-precision inputs are computed in float32 and the outputs cast back to the input dtype.
    """
    out_dtype = s.dtype
    cdt = _compute_dtype(out_dtype)
    s = s.to(cdt)

    def cast(t):
        return None if t is None else t.to(cdt)

    vo = 0 if w.wv is None else w.wv.size(0)
    if w.wh is not None:
        v = v.to(cdt)
        vh = torch.einsum("hc,ncx->nhx", cast(w.wh), v)  # [n, h, 3]
        vn = clamped_norm(vh, dim=-1)  # [n, h]
        s_out = F.linear(torch.cat([s, vn], dim=-1), cast(w.ws_weight), cast(w.ws_bias))
        v_out = None
        if w.wv is not None:
            v_out = torch.einsum("oh,nhx->nox", cast(w.wv), vh)  # [n, vo, 3]
            if w.vector_gate:
                gate = F.linear(activation(s_out, w.vector_act), cast(w.wsv_weight), cast(w.wsv_bias))
                v_out = v_out * torch.sigmoid(gate).unsqueeze(-1)
            elif w.vector_act is not None:
                v_out = v_out * activation(clamped_norm(v_out, dim=-1, keepdim=True), w.vector_act)
    else:
        s_out = F.linear(s, cast(w.ws_weight), cast(w.ws_bias))
        v_out = None
        if vo:
            v_out = s_out.new_zeros(s_out.size(0), vo, 3)
    s_out = activation(s_out, w.scalar_act)
    return s_out.to(out_dtype), (None if v_out is None else v_out.to(out_dtype))


def gvp_conv_message(
    s: Tensor,
    v: Optional[Tensor],
    edge_s: Tensor,
    edge_v: Optional[Tensor],
    edge_index: Tensor,
    gvps: Sequence[GVPWeights],
    num_nodes: Optional[int] = None,
) -> Tuple[Tensor, Optional[Tensor]]:
    """GVPConv (``aggr="mean"``): messages over edges j -> i, mean-aggregated at the target i.

    For edge e with ``j = edge_index[0, e]`` (source) and ``i = edge_index[1, e]`` (target), the
    message is the GVP stack ``gvps`` applied to ``([s_j, e_s, s_i], [V_j, e_V, V_i])`` (channel
    concatenation). Node i receives the mean of its incoming messages, zeros when it has none.

    Shapes: ``s`` [N, si], ``v`` [N, vi, 3] or None, ``edge_s`` [E, se], ``edge_v`` [E, ve, 3] or None,
    ``edge_index`` [2, E]. Returns ``(s [N, so], V [N, vo, 3] or None)`` of the last GVP's sizes.
    """
    n = s.size(0) if num_nodes is None else int(num_nodes)
    out_dtype = s.dtype
    cdt = _compute_dtype(out_dtype)
    source, target = edge_index[0].long(), edge_index[1].long()
    ms = torch.cat([s[source], edge_s, s[target]], dim=-1).to(cdt)
    vparts = [t for t in (None if v is None else v[source], edge_v, None if v is None else v[target]) if t is not None]
    mv = torch.cat(vparts, dim=-2).to(cdt) if vparts else None
    for w in gvps:
        ms, mv = gvp(ms, mv, w)
    count = torch.zeros(n, dtype=cdt, device=s.device).index_add_(
        0, target, torch.ones(target.numel(), dtype=cdt, device=s.device)
    ).clamp_(min=1)
    out_s = torch.zeros(n, ms.size(1), dtype=cdt, device=s.device).index_add_(0, target, ms) / count[:, None]
    out_v = None
    if mv is not None:
        out_v = torch.zeros(n, mv.size(1), 3, dtype=cdt, device=s.device).index_add_(0, target, mv)
        out_v = out_v / count[:, None, None]
    return out_s.to(out_dtype), (None if out_v is None else out_v.to(out_dtype))
