"""GVP ops: the reference equals a loop-by-loop definition; every backend equals the reference forward
and backward (features, edge features, every weight) on random and real radius graphs; SE(3)
invariance/equivariance; gradcheck, opcheck, torch.compile; bad inputs raise clear errors."""
import math

import pytest
import torch

import esmgear_fast as ef
from esmgear_fast import BackendUnavailableError
from esmgear_fast.data import collate
from esmgear_fast.ops import GVPWeights, gvp, gvp_conv_message, radius_graph
from esmgear_fast.ops.gvp import pack_gvps
from esmgear_fast.testing import real_proteins

WEIGHT_FIELDS = ("wh", "ws_weight", "ws_bias", "wv", "wsv_weight", "wsv_bias")


def make_gvp(si, vi, so, vo, gate=False, acts=("relu", "sigmoid"), seed=0, dtype=torch.float64, scale=0.4):
    g = torch.Generator().manual_seed(seed)

    def w(*shape):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    h = max(vi, vo) if vi else 0
    gate = gate and vi > 0 and vo > 0
    return GVPWeights(
        wh=w(h, vi) if vi else None,
        ws_weight=w(so, si + h),
        ws_bias=w(so),
        wv=(w(vo, h) if vo else None),
        wsv_weight=w(vo, so) if gate else None,
        wsv_bias=w(vo) if gate else None,
        scalar_act=acts[0],
        vector_act=acts[1],
        vector_gate=gate,
    )


def make_stack(si, vi, se, ve, so, vo, gate=False, acts=("relu", "sigmoid"), n_layers=3, seed=0,
               dtype=torch.float64):
    """gvp-pytorch's GVPConv message stack: (2si+se, 2vi+ve) -> out, then out -> out; last without activations."""
    stack = []
    dims = (2 * si + se, 2 * vi + ve)
    for k in range(n_layers):
        last = k == n_layers - 1
        stack.append(make_gvp(*dims, so, vo, gate, (None, None) if last else acts, seed=seed + k, dtype=dtype))
        dims = (so, vo)
    return stack


def random_inputs(n, e, si, vi, se, ve, seed=1, dtype=torch.float64, isolated=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    s, v = r(n, si), (r(n, vi, 3) if vi else None)
    es, ev = r(e, se), (r(e, ve, 3) if ve else None)
    edge_index = torch.randint(0, n - isolated, (2, e), generator=g)
    return s, v, es, ev, edge_index


def real_inputs(n_proteins=2, max_len=60, si=6, vi=3, se=4, ve=1, dtype=torch.float64):
    """Radius graph (10 A, cap 32) on real C-alpha chains; edge vectors are the unit j -> i directions."""
    batch = collate(real_proteins(n=n_proteins, max_len=max_len))
    pos = batch.pos.to(torch.float64)
    edge_index = radius_graph(batch.pos, 10.0, batch=batch.batch, max_num_neighbors=32)
    g = torch.Generator().manual_seed(7)
    n, e = pos.size(0), edge_index.size(1)
    d = pos[edge_index[1]] - pos[edge_index[0]]
    ev = (d / d.norm(dim=-1, keepdim=True)).unsqueeze(1).repeat(1, ve, 1)
    es = torch.cat([d.norm(dim=-1, keepdim=True) / 10, torch.randn(e, se - 1, generator=g, dtype=torch.float64)], 1)
    s = torch.randn(n, si, generator=g, dtype=torch.float64)
    # node vectors: directions to the next and previous residue of the chain (real geometry)
    nxt = torch.roll(pos, -1, 0) - pos
    v = torch.stack([nxt, -torch.roll(nxt, 1, 0), pos - pos.mean(0)], 1)[:, :vi]
    return s.to(dtype), v.to(dtype), es.to(dtype), ev.to(dtype), edge_index


def leaves(s, v, es, ev, stack):
    out = [t for t in (s, v, es, ev) if t is not None]
    for w in stack:
        out += [getattr(w, f) for f in WEIGHT_FIELDS if getattr(w, f) is not None]
    return out


def clone_all(s, v, es, ev, stack):
    def c(t):
        return None if t is None else t.detach().clone().requires_grad_(True)

    return c(s), c(v), c(es), c(ev), [w._replace(**{f: c(getattr(w, f)) for f in WEIGHT_FIELDS}) for w in stack]


def assert_conv_parity(backend, s, v, es, ev, ei, stack, atol=None, rtol=None, seed=3, **kw):
    """Forward and backward (every input and weight) of a backend against the reference."""
    a = clone_all(s, v, es, ev, stack)
    b = clone_all(s, v, es, ev, stack)
    out = gvp_conv_message(*a[:4], ei, a[4], backend=backend, **kw)
    ref = ef.reference.gvp_conv_message(*b[:4], ei, b[4])
    tol = {} if atol is None else dict(atol=atol, rtol=rtol)
    torch.testing.assert_close(out[0], ref[0], **tol)
    if ref[1] is None:
        assert out[1] is None
    else:
        torch.testing.assert_close(out[1], ref[1], **tol)
    g = torch.Generator().manual_seed(seed)
    grads = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype) for t in ref if t is not None]
    loss_out = sum((o * gr).sum() for o, gr in zip([t for t in out if t is not None], grads))
    loss_ref = sum((o * gr).sum() for o, gr in zip([t for t in ref if t is not None], grads))
    la, lb = leaves(*a), leaves(*b)
    ga = torch.autograd.grad(loss_out, la, allow_unused=True)
    gb = torch.autograd.grad(loss_ref, lb, allow_unused=True)
    for x, y in zip(ga, gb):
        if y is None:
            assert x is None or torch.count_nonzero(x) == 0
        else:
            torch.testing.assert_close(x, y, **tol)
    return out, ref


# ------------------------------------------------------------------------------------------------
# the reference against a loop-by-loop definition
# ------------------------------------------------------------------------------------------------
ACT = {None: lambda x: x, "relu": lambda x: max(x, 0.0), "sigmoid": lambda x: 1 / (1 + math.exp(-x)),
       "silu": lambda x: x / (1 + math.exp(-x))}


def definition_gvp_row(s, v, w):
    """One GVP on one row with Python floats: s list[si], v list[vi][3]."""
    vi = len(v)
    so = w.ws_weight.shape[0]
    W = lambda t: t.tolist()  # noqa: E731
    if vi == 0:
        sp = [sum(W(w.ws_weight)[o][k] * s[k] for k in range(len(s))) + float(w.ws_bias[o]) for o in range(so)]
        vo = 0 if w.wv is None else w.wv.shape[0]
        return [ACT[w.scalar_act](x) for x in sp], [[0.0, 0.0, 0.0] for _ in range(vo)]
    wh, ws, wv = W(w.wh), W(w.ws_weight), (None if w.wv is None else W(w.wv))
    h = len(wh)
    vh = [[sum(wh[c][k] * v[k][x] for k in range(vi)) for x in range(3)] for c in range(h)]
    vn = [math.sqrt(max(sum(q * q for q in vh[c]), 1e-8)) for c in range(h)]
    inp = list(s) + vn
    sp = [sum(ws[o][k] * inp[k] for k in range(len(inp))) + float(w.ws_bias[o]) for o in range(so)]
    vout = []
    if wv is not None:
        vout = [[sum(wv[o][c] * vh[c][x] for c in range(h)) for x in range(3)] for o in range(len(wv))]
        if w.vector_gate:
            a = [ACT[w.vector_act](x) for x in sp]
            for o in range(len(vout)):
                gate = sum(float(w.wsv_weight[o, k]) * a[k] for k in range(so)) + float(w.wsv_bias[o])
                vout[o] = [q / (1 + math.exp(-gate)) for q in vout[o]]
        elif w.vector_act is not None:
            for o in range(len(vout)):
                f = ACT[w.vector_act](math.sqrt(max(sum(q * q for q in vout[o]), 1e-8)))
                vout[o] = [q * f for q in vout[o]]
    return [ACT[w.scalar_act](x) for x in sp], vout


CONFIGS = [  # (si, vi, so, vo, gate, acts)
    (4, 3, 5, 2, False, ("relu", "sigmoid")),
    (4, 3, 5, 2, True, ("relu", "sigmoid")),
    (4, 2, 3, 4, True, ("silu", None)),
    (4, 2, 3, 4, False, ("sigmoid", "silu")),
    (4, 3, 5, 2, False, (None, None)),
    (4, 0, 5, 2, False, ("relu", "sigmoid")),
    (4, 3, 5, 0, True, ("silu", "relu")),
]


@pytest.mark.parametrize("config", CONFIGS)
def test_reference_gvp_matches_definition(config):
    si, vi, so, vo, gate, acts = config
    w = make_gvp(si, vi, so, vo, gate, acts, seed=2)
    s, v, _, _, _ = random_inputs(5, 1, si, vi, 1, 0, seed=4)
    out_s, out_v = ef.reference.gvp(s, v, w)
    expect = [definition_gvp_row(s[r].tolist(), [] if v is None else v[r].tolist(), w) for r in range(5)]
    torch.testing.assert_close(out_s, torch.tensor([e[0] for e in expect], dtype=torch.float64))
    if vo:
        torch.testing.assert_close(out_v, torch.tensor([e[1] for e in expect], dtype=torch.float64))
    else:
        assert out_v is None


@pytest.mark.parametrize("gate", [False, True])
def test_reference_conv_matches_definition(gate):
    si, vi, se, ve, so, vo = 3, 2, 2, 1, 4, 2
    stack = make_stack(si, vi, se, ve, so, vo, gate=gate, seed=5)
    n = 6
    s, v, es, ev, ei = random_inputs(n, 14, si, vi, se, ve, seed=6, isolated=1)
    out_s, out_v = ef.reference.gvp_conv_message(s, v, es, ev, ei, stack)
    sums_s = [[0.0] * so for _ in range(n)]
    sums_v = [[[0.0] * 3 for _ in range(vo)] for _ in range(n)]
    count = [0] * n
    for e, (j, i) in enumerate(ei.t().tolist()):
        ms = s[j].tolist() + es[e].tolist() + s[i].tolist()
        mv = v[j].tolist() + ev[e].tolist() + v[i].tolist()
        for w in stack:
            ms, mv = definition_gvp_row(ms, mv, w)
        count[i] += 1
        for o in range(so):
            sums_s[i][o] += ms[o]
        for o in range(vo):
            for x in range(3):
                sums_v[i][o][x] += mv[o][x]
    exp_s = torch.tensor([[q / max(count[i], 1) for q in sums_s[i]] for i in range(n)], dtype=torch.float64)
    exp_v = torch.tensor([[[q / max(count[i], 1) for q in r] for r in sums_v[i]] for i in range(n)],
                         dtype=torch.float64)
    torch.testing.assert_close(out_s, exp_s)
    torch.testing.assert_close(out_v, exp_v)
    assert count[n - 1] == 0 and torch.all(out_s[n - 1] == 0)


# ------------------------------------------------------------------------------------------------
# backends against the reference
# ------------------------------------------------------------------------------------------------
STACK_CONFIGS = [  # (si, vi, se, ve, so, vo, gate, acts, n_layers)
    (5, 3, 4, 1, 6, 3, False, ("relu", "sigmoid"), 3),
    (5, 3, 4, 1, 6, 3, True, ("relu", "sigmoid"), 3),
    (5, 2, 4, 2, 4, 5, True, ("silu", "silu"), 3),
    (5, 2, 4, 0, 4, 3, False, ("sigmoid", "relu"), 2),
    (5, 0, 4, 2, 4, 3, False, ("relu", None), 1),
    (5, 0, 4, 0, 4, 3, False, ("relu", "sigmoid"), 3),
    (5, 3, 4, 1, 6, 0, False, ("relu", "sigmoid"), 3),
]


@pytest.mark.parametrize("backend", ["extension", "reference"])
@pytest.mark.parametrize("config", STACK_CONFIGS)
def test_conv_parity_random(backend, config):
    si, vi, se, ve, so, vo, gate, acts, n_layers = config
    stack = make_stack(si, vi, se, ve, so, vo, gate, acts, n_layers, seed=11)
    s, v, es, ev, ei = random_inputs(30, 120, si, vi, se, ve, seed=12, isolated=3)
    out, _ = assert_conv_parity(backend, s, v, es, ev, ei, stack)
    assert torch.all(out[0][-3:] == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gate", [False, True])
def test_conv_parity_real_radius_graph(dtype, gate):
    s, v, es, ev, ei = real_inputs(dtype=dtype)
    assert ei.size(1) > 10 * s.size(0)  # a real dense protein neighbourhood
    stack = make_stack(6, 3, 4, 1, 8, 4, gate, seed=21, dtype=dtype)
    # float32: weight gradients are sums over ~1000 edges, associated differently by each backend
    tol = (1e-3, 1e-3) if dtype == torch.float32 else (None, None)
    assert_conv_parity("extension", s, v, es, ev, ei, stack, *tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_conv_half_precision(dtype):
    s, v, es, ev, ei = real_inputs(n_proteins=1, dtype=torch.float32)
    stack = make_stack(6, 3, 4, 1, 8, 4, True, seed=22, dtype=torch.float32)
    ref = ef.reference.gvp_conv_message(s, v, es, ev, ei, stack)
    half = [t.to(dtype) for t in (s, v, es, ev)]
    stack_h = [w._replace(**{f: None if getattr(w, f) is None else getattr(w, f).to(dtype) for f in WEIGHT_FIELDS})
               for w in stack]
    out = gvp_conv_message(*half, ei, stack_h, backend="extension")
    assert out[0].dtype == dtype and out[1].dtype == dtype
    tol = 2e-2 if dtype == torch.float16 else 6e-2
    torch.testing.assert_close(out[0].float(), ref[0], atol=tol, rtol=tol)
    torch.testing.assert_close(out[1].float(), ref[1], atol=tol, rtol=tol)


@pytest.mark.parametrize("backend", ["extension", "reference"])
def test_empty_graph_and_isolated_nodes(backend):
    stack = make_stack(3, 2, 2, 1, 4, 2, seed=3)
    s, v, _, _, _ = random_inputs(5, 1, 3, 2, 2, 1)
    es, ev = torch.zeros(0, 2, dtype=torch.float64), torch.zeros(0, 1, 3, dtype=torch.float64)
    ei = torch.zeros(2, 0, dtype=torch.int64)
    s.requires_grad_(True)
    out_s, out_v = gvp_conv_message(s, v, es, ev, ei, stack, backend=backend)
    assert out_s.shape == (5, 4) and out_v.shape == (5, 2, 3)
    assert torch.all(out_s == 0) and torch.all(out_v == 0)
    out_s.sum().backward()
    assert torch.all(s.grad == 0)


@pytest.mark.parametrize("backend", ["extension", "reference"])
@pytest.mark.parametrize("gate", [False, True])
def test_se3_invariance_equivariance(backend, gate):
    s, v, es, ev, ei = real_inputs(n_proteins=1)
    stack = make_stack(6, 3, 4, 1, 8, 4, gate, seed=31)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    out_s, out_v = gvp_conv_message(s, v, es, ev, ei, stack, backend=backend)
    rot_s, rot_v = gvp_conv_message(s, v @ q.T, es, ev @ q.T, ei, stack, backend=backend)
    torch.testing.assert_close(rot_s, out_s)
    torch.testing.assert_close(rot_v, out_v @ q.T)
    assert out_v.abs().max() > 1e-3  # the equivariance check is not on all-zero vectors


@pytest.mark.parametrize("config", CONFIGS)
def test_gvp_op_matches_reference(config):
    si, vi, so, vo, gate, acts = config
    w = make_gvp(si, vi, so, vo, gate, acts, seed=8)
    s, v, _, _, _ = random_inputs(7, 1, si, vi, 1, 0, seed=9)
    out = gvp(s, v, w)
    ref = ef.reference.gvp(s, v, w)
    torch.testing.assert_close(out[0], ref[0])
    assert (out[1] is None) == (vo == 0)


def test_gradcheck_extension():
    stack = make_stack(3, 2, 2, 1, 3, 2, True, ("silu", "sigmoid"), seed=41)
    s, v, es, ev, ei = random_inputs(6, 15, 3, 2, 2, 1, seed=42, isolated=1)
    params, acts, gates = pack_gvps(stack)
    params = [None if p is None else p.clone().requires_grad_(True) for p in params]
    inputs = [t.clone().requires_grad_(True) for t in (s, v, es, ev)]

    def fn(s, v, es, ev, *ps):
        it = iter(ps)
        full = [None if p is None else next(it) for p in params]
        return torch.ops.esmgear_fast.gvp_conv_message(s, v, es, ev, ei, full, acts, gates, 6)

    assert torch.autograd.gradcheck(fn, (*inputs, *[p for p in params if p is not None]))


def test_opcheck_extension():
    stack = make_stack(3, 2, 2, 1, 3, 2, True, seed=43, dtype=torch.float32)
    s, v, es, ev, ei = random_inputs(6, 15, 3, 2, 2, 1, seed=44, dtype=torch.float32)
    params, acts, gates = pack_gvps(stack)
    torch.library.opcheck(torch.ops.esmgear_fast.gvp_conv_message.default,
                          (s, v, es, ev, ei, params, acts, gates, 6))


@pytest.mark.parametrize("backend", ["extension", "reference"])
def test_torch_compile_fullgraph(backend):
    stack = make_stack(3, 2, 2, 1, 3, 2, True, seed=45, dtype=torch.float32)
    s, v, es, ev, ei = random_inputs(8, 20, 3, 2, 2, 1, seed=46, dtype=torch.float32)
    s.requires_grad_(True)

    def fn(s, v, es, ev):
        out_s, out_v = gvp_conv_message(s, v, es, ev, ei, stack, backend=backend)
        return out_s.sum() + (out_v * out_v).sum()

    compiled = torch.compile(fn, fullgraph=True)
    loss = compiled(s, v, es, ev)
    torch.testing.assert_close(loss, fn(s, v, es, ev))
    (g,) = torch.autograd.grad(loss, s)
    (g_ref,) = torch.autograd.grad(fn(s, v, es, ev), s)
    torch.testing.assert_close(g, g_ref)


# ------------------------------------------------------------------------------------------------
# bad inputs
# ------------------------------------------------------------------------------------------------
def good_conv():
    stack = make_stack(3, 2, 2, 1, 4, 2, seed=51, dtype=torch.float32)
    return (*random_inputs(6, 12, 3, 2, 2, 1, seed=52, dtype=torch.float32), stack)


@pytest.mark.parametrize("backend", ["extension", "reference"])
def test_bad_conv_inputs(backend):
    s, v, es, ev, ei, stack = good_conv()

    def call(**kw):
        args = dict(s=s, v=v, edge_s=es, edge_v=ev, edge_index=ei, gvps=stack)
        args.update(kw)
        return gvp_conv_message(**args, backend=backend)

    too_big, negative = ei.clone(), ei.clone()
    too_big[0, 3] = 6
    negative[1, 2] = -1
    with pytest.raises(ValueError, match=r"edge_index has entries outside \[0, 6\)"):
        call(edge_index=too_big)
    with pytest.raises(ValueError, match="edge_index has entries outside"):
        call(edge_index=negative)
    with pytest.raises(ValueError, match=r"edge_index must have shape \[2, E\]"):
        call(edge_index=ei[0])
    with pytest.raises(TypeError, match="edge_index must be int64"):
        call(edge_index=ei.float())
    with pytest.raises(ValueError, match=r"s must be a tensor of shape \[N, si\]"):
        call(s=s[0])
    with pytest.raises(ValueError, match=r"v must be a tensor of shape \[N, vi, 3\]"):
        call(v=v[:, :, :2])
    with pytest.raises(TypeError, match="v has dtype"):
        call(v=v.double())
    with pytest.raises(ValueError, match=r"edge_s must be a tensor of shape \[E, se\] = \[12, se\]"):
        call(edge_s=es[:-1])
    with pytest.raises(ValueError, match=r"edge_v must be a tensor of shape \[E, ve, 3\] = \[12, ve, 3\]"):
        call(edge_v=ev[:-1])
    with pytest.raises(ValueError, match=r"gvps\[0\].ws_weight must have shape"):
        call(s=torch.randn(6, 4))
    with pytest.raises(ValueError, match=r"gvps\[1\].wh must have shape"):
        call(gvps=[stack[0], make_gvp(4, 3, 4, 2, dtype=torch.float32), stack[2]])
    with pytest.raises(TypeError, match=r"gvps\[0\].ws_bias has dtype"):
        call(gvps=[stack[0]._replace(ws_bias=stack[0].ws_bias.double())] + stack[1:])
    with pytest.raises(ValueError, match="scalar_act must be one of"):
        call(gvps=[stack[0]._replace(scalar_act="tanh")] + stack[1:])
    with pytest.raises(ValueError, match="non-empty list"):
        call(gvps=[])
    with pytest.raises(ValueError, match="wsv_weight must have shape"):
        call(gvps=[stack[0]._replace(vector_gate=True)] + stack[1:])
    with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
        call(s=s.long(), v=None)


def test_unknown_backends():
    s, v, es, ev, ei, stack = good_conv()
    with pytest.raises(ValueError, match="unknown backend"):
        gvp_conv_message(s, v, es, ev, ei, stack, backend="cuda")
    with pytest.raises(BackendUnavailableError, match="gvp has no 'extension' backend"):
        gvp(s, v, make_gvp(3, 2, 4, 2, dtype=torch.float32), backend="extension")


def test_bad_gvp_inputs():
    w = make_gvp(3, 2, 4, 2, dtype=torch.float32)
    s, v = torch.randn(5, 3), torch.randn(5, 2, 3)
    with pytest.raises(ValueError, match=r"wh must have shape \[h, vi\]"):
        gvp(s, torch.randn(5, 3, 3), w)
    with pytest.raises(ValueError, match="wh must be None when there are no vector inputs"):
        gvp(s, None, w)
    with pytest.raises(ValueError, match=r"v must be a tensor of shape \[n, vi, 3\] = \[5, vi, 3\]"):
        gvp(s, v[:4], w)
    with pytest.raises(TypeError, match="must be a GVPWeights"):
        gvp(s, v, tuple(w))
