"""Fused GVPConv message + mean aggregation (Triton), with a recomputing backward.

Forward: edges are sorted by target once (CSR: ``rowptr`` [N + 1], ``perm`` [E]); one program per
target node walks its incoming edges in tiles of ``BLOCK_E``, gathers the inputs, runs the whole GVP
message stack (1 to 3 GVPs) on the tile with ``tl.dot`` and sums the messages in registers; it
writes only the [N, so] / [N, vo, 3] means. No [E, ...] intermediate of the stack is stored and no
atomics are used (deterministic). The first GVP is decomposed as in ``csrc/ops/gvp.cpp``: the
node-side products ``W_j s``, ``W_i s + b``, ``W_hj V``, ``W_hi V`` are GEMMs on N rows before the
kernel; the edge-side products ``W_e e_s``, ``W_n |V_h|``, ``W_he e_V`` run inside it.

Backward: not stored, recomputed. :func:`gvp_conv_message_backward` recomputes the per-edge
intermediates with PyTorch ops and applies the hand-written vector-Jacobian products of the GVP
(no autograd inside, so it also traces under ``torch.compile``); the node-side weight gradients
are GEMMs on N rows after scattering the per-edge gradients to the nodes.

Registration: ``torch.library.custom_op`` ``esmgear_fast::gvp_conv_message_triton`` with a fake
kernel and ``register_autograd``; under ``torch.compile`` it is an opaque call (not traced into
Inductor). ``triton_op`` + ``wrap_triton`` was tried first, but its fake-tensor run executes the kernel
under the CPU interpreter and fails opcheck there.

Supported here: every GVP of the stack has vector inputs and outputs (h > 0, vo > 0); anything else
raises :class:`esmgear_fast.BackendUnavailableError` from the op wrapper. ``tl.dot`` inputs are the
feature dtype (float16 or float32; float32 at IEEE precision, not TF32); accumulation is float32.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

NORM_EPS = 1e-8
BLOCK_E = 16  # edges per tile; tl.dot needs >= 16 rows


def _pad(n: int) -> int:
    return max(16, triton.next_power_of_2(max(int(n), 1)))


# ----------------------------------------------------------------------------------------------
# Triton device functions
# ----------------------------------------------------------------------------------------------
@triton.jit
def _act(x, ACT: tl.constexpr):
    # 0 none, 1 relu, 2 sigmoid, 3 silu (codes of csrc/ops/gvp.cpp)
    if ACT == 1:
        x = tl.maximum(x, 0.0)
    elif ACT == 2:
        x = tl.sigmoid(x)
    elif ACT == 3:
        x = x * tl.sigmoid(x)
    return x


@triton.jit
def _load_wt(w_ptr, ld, col0, K, N, KP: tl.constexpr, NP: tl.constexpr, DT: tl.constexpr):
    """W[n, col0 + k] as a zero-padded [KP, NP] tile (the transpose of a column block of W)."""
    k = tl.arange(0, KP)[:, None]
    n = tl.arange(0, NP)[None, :]
    return tl.load(w_ptr + n * ld + col0 + k, mask=(k < K) & (n < N), other=0.0).to(DT)


@triton.jit
def _mm(x, wt, DT: tl.constexpr, IEEE: tl.constexpr, ACC: tl.constexpr):
    if IEEE:
        return tl.dot(x.to(DT), wt, input_precision="ieee", out_dtype=ACC)
    return tl.dot(x.to(DT), wt, out_dtype=ACC)


@triton.jit
def _norm(hx, hy, hz):
    return tl.sqrt(tl.maximum(hx * hx + hy * hy + hz * hz, 1e-8))


@triton.jit
def _gvp_tail(s_pre, hx, hy, hz, wv_ptr, wsv_ptr, bsv_ptr, H, SO, VO,
              HP: tl.constexpr, SOP: tl.constexpr, VOP: tl.constexpr,
              SACT: tl.constexpr, VACT: tl.constexpr, GATE: tl.constexpr, DT: tl.constexpr, IEEE: tl.constexpr, ACC: tl.constexpr):
    """V' = W_v V_h, the gate, and the scalar activation (everything after s_pre)."""
    wvt = _load_wt(wv_ptr, H, 0, H, VO, HP, VOP, DT)
    ox = _mm(hx, wvt, DT, IEEE, ACC)
    oy = _mm(hy, wvt, DT, IEEE, ACC)
    oz = _mm(hz, wvt, DT, IEEE, ACC)
    if GATE:
        wsvt = _load_wt(wsv_ptr, SO, 0, SO, VO, SOP, VOP, DT)
        cols = tl.arange(0, VOP)
        bsv = tl.load(bsv_ptr + cols, mask=cols < VO, other=0.0).to(ACC)
        g = tl.sigmoid(_mm(_act(s_pre, VACT), wsvt, DT, IEEE, ACC) + bsv[None, :])
        ox, oy, oz = ox * g, oy * g, oz * g
    elif VACT != 0:
        f = _act(_norm(ox, oy, oz), VACT)
        ox, oy, oz = ox * f, oy * f, oz * f
    return _act(s_pre, SACT), ox, oy, oz


@triton.jit
def _gvp_layer(s, vx, vy, vz, wh_ptr, ws_ptr, bs_ptr, wv_ptr, wsv_ptr, bsv_ptr, SI, VI, H, SO, VO,
               SIP: tl.constexpr, VIP: tl.constexpr, HP: tl.constexpr, SOP: tl.constexpr, VOP: tl.constexpr,
               SACT: tl.constexpr, VACT: tl.constexpr, GATE: tl.constexpr, DT: tl.constexpr, IEEE: tl.constexpr, ACC: tl.constexpr):
    """One whole GVP on a tile: s [BE, SIP], v* [BE, VIP] -> s [BE, SOP], v* [BE, VOP]."""
    wht = _load_wt(wh_ptr, VI, 0, VI, H, VIP, HP, DT)
    hx = _mm(vx, wht, DT, IEEE, ACC)
    hy = _mm(vy, wht, DT, IEEE, ACC)
    hz = _mm(vz, wht, DT, IEEE, ACC)
    vn = _norm(hx, hy, hz)
    cols = tl.arange(0, SOP)
    bs = tl.load(bs_ptr + cols, mask=cols < SO, other=0.0).to(ACC)
    s_pre = (_mm(s, _load_wt(ws_ptr, SI + H, 0, SI, SO, SIP, SOP, DT), DT, IEEE, ACC)
             + _mm(vn, _load_wt(ws_ptr, SI + H, SI, H, SO, HP, SOP, DT), DT, IEEE, ACC) + bs[None, :])
    return _gvp_tail(s_pre, hx, hy, hz, wv_ptr, wsv_ptr, bsv_ptr, H, SO, VO, HP, SOP, VOP,
                     SACT, VACT, GATE, DT, IEEE, ACC)


@triton.jit
def _gvp_conv_fwd_kernel(
    rowptr_ptr, perm_ptr, source_ptr,
    node_sj_ptr, node_si_ptr, node_vj_ptr, node_vi_ptr, edge_s_ptr, edge_v_ptr,
    w1h_ptr, w1s_ptr, w1v_ptr, w1sv_ptr, b1sv_ptr,
    w2h_ptr, w2s_ptr, b2s_ptr, w2v_ptr, w2sv_ptr, b2sv_ptr,
    w3h_ptr, w3s_ptr, b3s_ptr, w3v_ptr, w3sv_ptr, b3sv_ptr,
    out_s_ptr, out_v_ptr,
    SI, VI, SE, VE, H1, SO1, VO1, H2, SO2, VO2, H3, SO3, VO3,
    SEP: tl.constexpr, VEP: tl.constexpr, H1P: tl.constexpr, SO1P: tl.constexpr, VO1P: tl.constexpr,
    H2P: tl.constexpr, SO2P: tl.constexpr, VO2P: tl.constexpr,
    H3P: tl.constexpr, SO3P: tl.constexpr, VO3P: tl.constexpr,
    A1S: tl.constexpr, A1V: tl.constexpr, G1: tl.constexpr,
    A2S: tl.constexpr, A2V: tl.constexpr, G2: tl.constexpr,
    A3S: tl.constexpr, A3V: tl.constexpr, G3: tl.constexpr,
    NUM_LAYERS: tl.constexpr, HAS_VI: tl.constexpr, HAS_VE: tl.constexpr,
    SOL: tl.constexpr, VOL: tl.constexpr, so_last, vo_last,
    BE: tl.constexpr, DT: tl.constexpr, IEEE: tl.constexpr, ACC: tl.constexpr,
):
    node = tl.program_id(0).to(tl.int64)
    start = tl.load(rowptr_ptr + node)
    end = tl.load(rowptr_ptr + node + 1)
    rows = tl.arange(0, BE)
    c1 = tl.arange(0, SO1P)
    h1 = tl.arange(0, H1P)
    ce = tl.arange(0, SEP)
    cve = tl.arange(0, VEP)
    acc_s = tl.zeros((SOL,), dtype=ACC)
    acc_x = tl.zeros((VOL,), dtype=ACC)
    acc_y = tl.zeros((VOL,), dtype=ACC)
    acc_z = tl.zeros((VOL,), dtype=ACC)
    # node-side products of the target (the same for every incoming edge); b_s is folded into node_si
    si_row = tl.load(node_si_ptr + node * SO1 + c1, mask=c1 < SO1, other=0.0).to(ACC)
    w1e_t = _load_wt(w1s_ptr, 2 * SI + SE + H1, SI, SE, SO1, SEP, SO1P, DT)
    w1n_t = _load_wt(w1s_ptr, 2 * SI + SE + H1, 2 * SI + SE, H1, SO1, H1P, SO1P, DT)
    if HAS_VI:
        vix = tl.load(node_vi_ptr + node * 3 * H1 + h1, mask=h1 < H1, other=0.0).to(ACC)
        viy = tl.load(node_vi_ptr + node * 3 * H1 + H1 + h1, mask=h1 < H1, other=0.0).to(ACC)
        viz = tl.load(node_vi_ptr + node * 3 * H1 + 2 * H1 + h1, mask=h1 < H1, other=0.0).to(ACC)
    if HAS_VE:
        w1he_t = _load_wt(w1h_ptr, 2 * VI + VE, VI, VE, H1, VEP, H1P, DT)
    e0 = start
    while e0 < end:  # (a while loop: the interpreter cannot range() over loaded bounds)
        offs = e0 + rows
        valid = offs < end
        eid = tl.load(perm_ptr + offs, mask=valid, other=0)
        j = tl.load(source_ptr + eid, mask=valid, other=0)
        m1 = valid[:, None] & (c1[None, :] < SO1)
        es = tl.load(edge_s_ptr + eid[:, None] * SE + ce[None, :], mask=valid[:, None] & (ce[None, :] < SE),
                     other=0.0)
        # first GVP: V_h = (W_hj V)[j] + (W_hi V)[i] + W_he e_V
        hx = tl.zeros((BE, H1P), dtype=ACC)
        hy = tl.zeros((BE, H1P), dtype=ACC)
        hz = tl.zeros((BE, H1P), dtype=ACC)
        if HAS_VI:
            mh = valid[:, None] & (h1[None, :] < H1)
            base = node_vj_ptr + j[:, None] * 3 * H1 + h1[None, :]
            hx += tl.load(base, mask=mh, other=0.0).to(ACC) + vix[None, :]
            hy += tl.load(base + H1, mask=mh, other=0.0).to(ACC) + viy[None, :]
            hz += tl.load(base + 2 * H1, mask=mh, other=0.0).to(ACC) + viz[None, :]
        if HAS_VE:
            mve = valid[:, None] & (cve[None, :] < VE)
            ebase = edge_v_ptr + eid[:, None] * VE * 3 + cve[None, :] * 3
            hx += _mm(tl.load(ebase, mask=mve, other=0.0), w1he_t, DT, IEEE, ACC)
            hy += _mm(tl.load(ebase + 1, mask=mve, other=0.0), w1he_t, DT, IEEE, ACC)
            hz += _mm(tl.load(ebase + 2, mask=mve, other=0.0), w1he_t, DT, IEEE, ACC)
        vn = _norm(hx, hy, hz)
        # s_pre = (W_j s)[j] + (W_i s + b)[i] + W_e e_s + W_n |V_h|
        s_pre = tl.load(node_sj_ptr + j[:, None] * SO1 + c1[None, :], mask=m1, other=0.0).to(ACC)
        s_pre += si_row[None, :] + _mm(es, w1e_t, DT, IEEE, ACC) + _mm(vn, w1n_t, DT, IEEE, ACC)
        s, vx, vy, vz = _gvp_tail(s_pre, hx, hy, hz, w1v_ptr, w1sv_ptr, b1sv_ptr, H1, SO1, VO1,
                                  H1P, SO1P, VO1P, A1S, A1V, G1, DT, IEEE, ACC)
        if NUM_LAYERS >= 2:
            s, vx, vy, vz = _gvp_layer(s, vx, vy, vz, w2h_ptr, w2s_ptr, b2s_ptr, w2v_ptr, w2sv_ptr, b2sv_ptr,
                                       SO1, VO1, H2, SO2, VO2, SO1P, VO1P, H2P, SO2P, VO2P, A2S, A2V, G2,
                                       DT, IEEE, ACC)
        if NUM_LAYERS >= 3:
            s, vx, vy, vz = _gvp_layer(s, vx, vy, vz, w3h_ptr, w3s_ptr, b3s_ptr, w3v_ptr, w3sv_ptr, b3sv_ptr,
                                       SO2, VO2, H3, SO3, VO3, SO2P, VO2P, H3P, SO3P, VO3P, A3S, A3V, G3,
                                       DT, IEEE, ACC)
        keep = valid[:, None]
        acc_s += tl.sum(tl.where(keep, s, 0.0), axis=0)
        acc_x += tl.sum(tl.where(keep, vx, 0.0), axis=0)
        acc_y += tl.sum(tl.where(keep, vy, 0.0), axis=0)
        acc_z += tl.sum(tl.where(keep, vz, 0.0), axis=0)
        e0 += BE
    inv = 1.0 / tl.maximum(end - start, 1).to(ACC)
    cs = tl.arange(0, SOL)
    tl.store(out_s_ptr + node * so_last + cs, (acc_s * inv).to(out_s_ptr.dtype.element_ty), mask=cs < so_last)
    cv = tl.arange(0, VOL)
    vbase = out_v_ptr + node * vo_last * 3 + cv * 3
    tl.store(vbase, (acc_x * inv).to(out_v_ptr.dtype.element_ty), mask=cv < vo_last)
    tl.store(vbase + 1, (acc_y * inv).to(out_v_ptr.dtype.element_ty), mask=cv < vo_last)
    tl.store(vbase + 2, (acc_z * inv).to(out_v_ptr.dtype.element_ty), mask=cv < vo_last)


# ----------------------------------------------------------------------------------------------
# CSR and parameter helpers
# ----------------------------------------------------------------------------------------------
def target_csr(edge_index: Tensor, num_nodes: int) -> Tuple[Tensor, Tensor]:
    """``(rowptr [N + 1], perm [E])``: the edges sorted (stably) by target; edge ``perm[k]`` is the k-th.

    Depends only on the graph, so a model can compute it once and pass it to every layer.
    """
    target = edge_index[1]
    perm = torch.argsort(target, stable=True)
    counts = torch.bincount(target, minlength=num_nodes)
    rowptr = torch.zeros(num_nodes + 1, dtype=torch.int64, device=edge_index.device)
    rowptr[1:] = torch.cumsum(counts, 0)
    return rowptr, perm


def _layer_params(params: Sequence[Optional[Tensor]], k: int) -> List[Optional[Tensor]]:
    return list(params[6 * k: 6 * k + 6])


# ----------------------------------------------------------------------------------------------
# forward op
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("esmgear_fast::gvp_conv_message_triton", mutates_args=())
def gvp_conv_message_triton(
    s: Tensor, v: Optional[Tensor], edge_s: Tensor, edge_v: Optional[Tensor], edge_index: Tensor,
    rowptr: Tensor, perm: Tensor, params: List[Tensor], activations: List[int],
    vector_gates: List[int], num_nodes: int,
) -> Tuple[Tensor, Tensor]:
    """Fused GVPConv mean-aggregated messages; inputs validated by ``esmgear_fast.ops.gvp``.

    ``params``: 6 per GVP (wh, ws_weight, ws_bias, wv, wsv_weight, wsv_bias; an absent one, e.g.
    wsv without the vector gate, as an empty tensor: torch.library's autograd cannot take a list
    with None entries), ``activations`` 2 per
    GVP (0 none, 1 relu, 2 sigmoid, 3 silu), ``vector_gates`` 0/1 per GVP, ``(rowptr, perm)`` from
    :func:`target_csr`. Returns ``(s_out [N, so], v_out [N, vo, 3])``.
    """
    num_layers = len(vector_gates)
    si = s.size(1)
    vi = 0 if v is None else v.size(1)
    se = edge_s.size(1)
    ve = 0 if edge_v is None else edge_v.size(1)
    layers = [_layer_params(params, k) for k in range(num_layers)]
    wh1, ws1, bs1, wv1, _, _ = layers[0]
    h1, so1 = wh1.size(0), ws1.size(0)
    # node-side products of the first GVP (GEMMs on N rows)
    ws_j = ws1[:, :si]
    ws_i = ws1[:, si + se: 2 * si + se]
    # (float32 for half inputs: they are read once per edge and summed in float32 anyway)
    acc = torch.float32 if s.dtype in (torch.float16, torch.bfloat16) else s.dtype
    node_sj = torch.matmul(s.to(acc), ws_j.to(acc).t()).contiguous()
    node_si = torch.addmm(bs1.to(acc), s.to(acc), ws_i.to(acc).t()).contiguous()
    if vi:
        v_xyz = v.to(acc).transpose(1, 2)
        node_vj = torch.matmul(v_xyz, wh1[:, :vi].to(acc).t()).contiguous()  # [N, 3, h1]
        node_vi = torch.matmul(v_xyz, wh1[:, vi + ve:].to(acc).t()).contiguous()
    else:
        node_vj = node_vi = s.new_empty(0)
    dims = []
    for k in range(3):
        if k < num_layers:
            wh, ws, _, wv, _, _ = layers[k]
            dims.append((wh.size(0), ws.size(0), wv.size(0)))
        else:
            dims.append((1, 1, 1))
    so_last, vo_last = dims[num_layers - 1][1], dims[num_layers - 1][2]
    out_s = s.new_empty(num_nodes, so_last)
    out_v = s.new_empty(num_nodes, vo_last, 3)
    if num_nodes == 0:
        return out_s, out_v
    dummy = s.new_empty(1)

    def ptr(t):
        return dummy if t is None or t.numel() == 0 else t.contiguous()

    flat = []
    for k in range(3):
        if k < num_layers:
            wh, ws, bs, wv, wsv, bsv = layers[k]
            flat.append([ptr(wh), ptr(ws), ptr(bs), ptr(wv), ptr(wsv), ptr(bsv)])
        else:
            flat.append([dummy] * 6)
    acts = list(activations) + [0] * (6 - 2 * num_layers)
    gates = list(vector_gates) + [0] * (3 - num_layers)
    dt = {torch.float16: tl.float16, torch.float64: tl.float64}.get(s.dtype, tl.float32)
    acc_dt = tl.float64 if s.dtype == torch.float64 else tl.float32
    _gvp_conv_fwd_kernel[(num_nodes,)](
        rowptr, perm, edge_index[0].contiguous(),
        node_sj, node_si, node_vj, node_vi, edge_s.contiguous(), ptr(edge_v),
        flat[0][0], flat[0][1], flat[0][3], flat[0][4], flat[0][5],
        flat[1][0], flat[1][1], flat[1][2], flat[1][3], flat[1][4], flat[1][5],
        flat[2][0], flat[2][1], flat[2][2], flat[2][3], flat[2][4], flat[2][5],
        out_s, out_v,
        si, vi, se, ve, h1, so1, dims[0][2], dims[1][0], dims[1][1], dims[1][2], dims[2][0], dims[2][1], dims[2][2],
        SEP=_pad(se), VEP=_pad(ve), H1P=_pad(h1), SO1P=_pad(so1), VO1P=_pad(dims[0][2]),
        H2P=_pad(dims[1][0]), SO2P=_pad(dims[1][1]), VO2P=_pad(dims[1][2]),
        H3P=_pad(dims[2][0]), SO3P=_pad(dims[2][1]), VO3P=_pad(dims[2][2]),
        A1S=acts[0], A1V=acts[1], G1=gates[0], A2S=acts[2], A2V=acts[3], G2=gates[1],
        A3S=acts[4], A3V=acts[5], G3=gates[2],
        NUM_LAYERS=num_layers, HAS_VI=vi > 0, HAS_VE=ve > 0,
        SOL=_pad(so_last), VOL=_pad(vo_last), so_last=so_last, vo_last=vo_last,
        BE=BLOCK_E, DT=dt, IEEE=s.dtype != torch.float16, ACC=acc_dt,
    )
    return out_s, out_v


@gvp_conv_message_triton.register_fake
def _fake(s, v, edge_s, edge_v, edge_index, rowptr, perm, params, activations, vector_gates, num_nodes):
    last = len(vector_gates) - 1
    so, vo = params[6 * last + 1].size(0), params[6 * last + 3].size(0)
    return s.new_empty(num_nodes, so), s.new_empty(num_nodes, vo, 3)


# ----------------------------------------------------------------------------------------------
# backward: recompute the per-edge intermediates, then hand-written vector-Jacobian products
# ----------------------------------------------------------------------------------------------
def _act_torch(x: Tensor, code: int) -> Tensor:
    if code == 1:
        return torch.relu(x)
    if code == 2:
        return torch.sigmoid(x)
    if code == 3:
        return torch.nn.functional.silu(x)
    return x


def _act_vjp(x: Tensor, code: int, grad: Tensor) -> Tensor:
    """grad * act'(x) (relu' = 1 where x > 0, as torch's threshold_backward)."""
    if code == 1:
        return grad * (x > 0).to(grad.dtype)
    if code == 2:
        sg = torch.sigmoid(x)
        return grad * sg * (1 - sg)
    if code == 3:
        sg = torch.sigmoid(x)
        return grad * sg * (1 + x * (1 - sg))
    return grad


def _norm_and_mask(vh: Tensor, dim: int, keepdim: bool = False) -> Tuple[Tensor, Tensor]:
    """(clamped norm, 1 where the clamp let the gradient through: torch's clamp_min passes sq >= eps)."""
    sq = (vh * vh).sum(dim, keepdim=keepdim)
    return torch.sqrt(torch.clamp(sq, min=NORM_EPS)), (sq >= NORM_EPS).to(vh.dtype)


def _tail(s_pre: Tensor, vh: Tensor, layer, sact: int, vact: int, gate: bool) -> Tuple[Tensor, Tensor]:
    _, _, _, wv, wsv, bsv = layer
    vout = torch.matmul(vh, wv.t())  # [E, 3, vo]
    if gate:
        vout = vout * torch.sigmoid(torch.addmm(bsv, _act_torch(s_pre, vact), wsv.t())).unsqueeze(1)
    elif vact:
        vout = vout * _act_torch(_norm_and_mask(vout, 1, True)[0], vact)
    return _act_torch(s_pre, sact), vout


def _tail_vjp(gs_out: Tensor, gv_out: Tensor, s_pre: Tensor, vh: Tensor, layer, sact: int, vact: int, gate: bool):
    """Gradients of _tail: (g s_pre, g vh, g wv, g wsv, g bsv)."""
    _, _, _, wv, wsv, bsv = layer
    vo, h = wv.shape
    vout0 = torch.matmul(vh, wv.t())
    gs_pre = _act_vjp(s_pre, sact, gs_out)
    g_wsv = g_bsv = None
    if gate:
        a = _act_torch(s_pre, vact)
        g = torch.sigmoid(torch.addmm(bsv, a, wsv.t()))
        gv0 = gv_out * g.unsqueeze(1)
        g_gate = (gv_out * vout0).sum(1) * g * (1 - g)  # [E, vo]
        g_wsv = g_gate.t() @ a
        g_bsv = g_gate.sum(0)
        gs_pre = gs_pre + _act_vjp(s_pre, vact, g_gate @ wsv)
    elif vact:
        n, mask = _norm_and_mask(vout0, 1, True)  # [E, 1, vo]
        g_n = _act_vjp(n, vact, (gv_out * vout0).sum(1, keepdim=True))
        gv0 = gv_out * _act_torch(n, vact) + vout0 * (g_n * mask / n)
    else:
        gv0 = gv_out
    g_wv = gv0.reshape(-1, vo).t() @ vh.reshape(-1, h)
    return gs_pre, gv0 @ wv, g_wv, g_wsv, g_bsv


def _layer_pre(s_in: Tensor, v_in: Tensor, layer) -> Tuple[Tensor, Tensor]:
    wh, ws, bs = layer[:3]
    vh = torch.matmul(v_in, wh.t())
    return torch.addmm(bs, torch.cat([s_in, _norm_and_mask(vh, 1)[0]], 1), ws.t()), vh


def gvp_conv_message_backward(
    grad_s: Tensor, grad_v: Tensor, s: Tensor, v: Optional[Tensor], edge_s: Tensor, edge_v: Optional[Tensor],
    edge_index: Tensor, params: Sequence[Optional[Tensor]], activations: Sequence[int],
    vector_gates: Sequence[int], num_nodes: int,
) -> Tuple[Tensor, Optional[Tensor], Tensor, Optional[Tensor], List[Optional[Tensor]]]:
    """Gradients of :func:`gvp_conv_message_triton` w.r.t. (s, v, edge_s, edge_v, params).

    Plain PyTorch (any device, traceable). Half inputs are differentiated in float32 and the
    gradients cast back.
    """
    acc = torch.float32 if s.dtype in (torch.float16, torch.bfloat16) else s.dtype

    def up(t):
        return None if t is None else t.to(acc)

    num_layers = len(vector_gates)
    layers = [[up(t) for t in _layer_params(params, k)] for k in range(num_layers)]  # (wsv, bsv empty if no gate)
    acts = [(int(activations[2 * k]), int(activations[2 * k + 1])) for k in range(num_layers)]
    gates = [bool(g) for g in vector_gates]
    s32, edge_s32, v32, edge_v32 = up(s), up(edge_s), up(v), up(edge_v)
    source, target = edge_index[0], edge_index[1]
    si, se = s.size(1), edge_s.size(1)
    vi = 0 if v is None else v.size(1)
    ve = 0 if edge_v is None else edge_v.size(1)
    wh1, ws1, bs1 = layers[0][:3]
    h1 = wh1.size(0)
    ws_j, ws_e, ws_i, ws_n = ws1.split([si, se, si, h1], 1)
    wh_j, wh_e, wh_i = wh1.split([vi, ve, vi], 1)

    # recompute the forward per edge (inputs of every GVP)
    v_xyz = v32.transpose(1, 2) if vi else None  # [N, 3, vi]
    ev_xyz = edge_v32.transpose(1, 2) if ve else None  # [E, 3, ve]
    vh1 = torch.zeros(edge_s.size(0), 3, h1, dtype=acc, device=s.device)
    if vi:
        vh1 = vh1 + torch.matmul(v_xyz, wh_j.t())[source] + torch.matmul(v_xyz, wh_i.t())[target]
    if ve:
        vh1 = vh1 + torch.matmul(ev_xyz, wh_e.t())
    vn1, mask1 = _norm_and_mask(vh1, 1)
    s_pre1 = (torch.addmm(bs1, torch.cat([edge_s32, vn1], 1), torch.cat([ws_e, ws_n], 1).t())
              + (s32 @ ws_j.t())[source] + (s32 @ ws_i.t())[target])
    inputs = []  # (s_in, v_in) of GVPs 2..L
    s_k, v_k = _tail(s_pre1, vh1, layers[0], *acts[0], gates[0])
    for k in range(1, num_layers):
        inputs.append((s_k, v_k))
        s_pre, vh = _layer_pre(s_k, v_k, layers[k])
        s_k, v_k = _tail(s_pre, vh, layers[k], *acts[k], gates[k])

    # mean aggregation
    count = torch.bincount(target, minlength=num_nodes).clamp(min=1).to(acc)
    inv = (1.0 / count)[target]
    g_s = grad_s.to(acc)[target] * inv[:, None]
    g_v = grad_v.to(acc).transpose(1, 2)[target] * inv[:, None, None]  # [E, 3, vo]

    grads: List[List[Optional[Tensor]]] = [[None] * 6 for _ in range(num_layers)]
    for k in range(num_layers - 1, 0, -1):
        s_in, v_in = inputs[k - 1]
        wh, ws, _, _, _, _ = layers[k]
        s_pre, vh = _layer_pre(s_in, v_in, layers[k])
        gs_pre, gvh, g_wv, g_wsv, g_bsv = _tail_vjp(g_s, g_v, s_pre, vh, layers[k], *acts[k], gates[k])
        vn, mask = _norm_and_mask(vh, 1)
        g_ws = gs_pre.t() @ torch.cat([s_in, vn], 1)
        g_in = gs_pre @ ws
        g_s, g_vn = g_in[:, : s_in.size(1)], g_in[:, s_in.size(1):]
        gvh = gvh + vh * (g_vn * mask / vn).unsqueeze(1)
        h = wh.size(0)
        g_wh = gvh.reshape(-1, h).t() @ v_in.reshape(-1, v_in.size(2))
        g_v = gvh @ wh
        grads[k] = [g_wh, g_ws, gs_pre.sum(0), g_wv, g_wsv, g_bsv]

    # first GVP (decomposed): per-edge parts, then node-side parts on N rows
    gs_pre, gvh, g_wv, g_wsv, g_bsv = _tail_vjp(g_s, g_v, s_pre1, vh1, layers[0], *acts[0], gates[0])
    gvh = gvh + vh1 * ((gs_pre @ ws_n) * mask1 / vn1).unsqueeze(1)
    g_ws_e = gs_pre.t() @ edge_s32
    g_ws_n = gs_pre.t() @ vn1
    g_edge_s = gs_pre @ ws_e
    node_g_src = torch.zeros(num_nodes, gs_pre.size(1), dtype=acc, device=s.device).index_add_(0, source, gs_pre)
    node_g_dst = torch.zeros_like(node_g_src).index_add_(0, target, gs_pre)
    g_s_nodes = node_g_src @ ws_j + node_g_dst @ ws_i
    g_ws1 = torch.cat([node_g_src.t() @ s32, g_ws_e, node_g_dst.t() @ s32, g_ws_n], 1)
    g_wh_parts = []
    g_v_nodes = g_edge_v = None
    if vi:
        node_gv_src = torch.zeros(num_nodes, 3, h1, dtype=acc, device=s.device).index_add_(0, source, gvh)
        node_gv_dst = torch.zeros_like(node_gv_src).index_add_(0, target, gvh)
        g_wh_j = node_gv_src.reshape(-1, h1).t() @ v_xyz.reshape(-1, vi)
        g_wh_i = node_gv_dst.reshape(-1, h1).t() @ v_xyz.reshape(-1, vi)
        g_v_nodes = (node_gv_src @ wh_j + node_gv_dst @ wh_i).transpose(1, 2).to(v.dtype)
    else:
        g_wh_j = g_wh_i = wh1.new_zeros(h1, 0)
    if ve:
        g_wh_e = gvh.reshape(-1, h1).t() @ ev_xyz.reshape(-1, ve)
        g_edge_v = (gvh @ wh_e).transpose(1, 2).to(edge_v.dtype)
    else:
        g_wh_e = wh1.new_zeros(h1, 0)
    g_wh_parts = [g_wh_j, g_wh_e, g_wh_i]
    grads[0] = [torch.cat(g_wh_parts, 1), g_ws1, gs_pre.sum(0), g_wv, g_wsv, g_bsv]
    flat = []
    for k in range(num_layers):
        for f, g in zip(_layer_params(params, k), grads[k]):
            flat.append(None if g is None else g.to(f.dtype))
    return g_s_nodes.to(s.dtype), g_v_nodes, g_edge_s.to(edge_s.dtype), g_edge_v, flat


def _setup_context(ctx, inputs, output):
    s, v, edge_s, edge_v, edge_index, rowptr, perm, params, activations, vector_gates, num_nodes = inputs
    ctx.meta = (list(activations), list(vector_gates), num_nodes, v is not None, edge_v is not None, len(params))
    ctx.save_for_backward(s, v, edge_s, edge_v, edge_index, *params)


def _backward(ctx, grad_s, grad_v):
    activations, vector_gates, num_nodes, has_v, has_ev, num_params = ctx.meta
    s, v, edge_s, edge_v, edge_index, *params = ctx.saved_tensors
    g_s, g_v, g_es, g_ev, g_params = gvp_conv_message_backward(
        grad_s, grad_v, s, v if has_v else None, edge_s, edge_v if has_ev else None, edge_index,
        params, activations, vector_gates, num_nodes,
    )
    # one gradient per input; the list of optional weights gets a list, int lists and graph tensors None
    return g_s, g_v, g_es, g_ev, None, None, None, g_params, None, None, None


torch.library.register_autograd(
    "esmgear_fast::gvp_conv_message_triton", _backward, setup_context=_setup_context
)
