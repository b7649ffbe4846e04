"""GVP layers without any peer library: one GVP against hand-written math, the tuple LayerNorm
and Dropout against their definitions, equivariance, parameter names, input errors."""
import math

import pytest
import torch
import torch.nn.functional as F

import esmgear_fast

from esmgear_fast.nn import GVP, GVPConv, GVPConvLayer, GVPDropout, GVPLayerNorm, GVPVectorDropout
from esmgear_fast.nn.gvp import activation_name


def random_rotation(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=dtype))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


@torch.no_grad()
def hand_gvp(layer, s, v):
    """Element-by-element GVP written from the paper / gvp-pytorch semantics, with python loops."""
    wh = layer.wh.weight
    ws, bs = layer.ws.weight, layer.ws.bias
    wv = layer.wv.weight if layer.vo else None
    n, h = s.size(0), wh.size(0)
    s_out = torch.empty(n, layer.so, dtype=s.dtype)
    v_out = torch.empty(n, layer.vo, 3, dtype=s.dtype)
    act = {"relu": lambda t: max(t, 0.0), "sigmoid": lambda t: 1 / (1 + math.exp(-t)), None: lambda t: t}
    for i in range(n):
        vh = [[sum(float(wh[k, c]) * float(v[i, c, x]) for c in range(layer.vi)) for x in range(3)] for k in range(h)]
        norms = [math.sqrt(max(sum(t * t for t in vh[k]), 1e-8)) for k in range(h)]
        features = [float(t) for t in s[i]] + norms
        pre = [sum(float(ws[o, f]) * features[f] for f in range(len(features))) + float(bs[o]) for o in range(layer.so)]
        for o in range(layer.vo):
            vec = [sum(float(wv[o, k]) * vh[k][x] for k in range(h)) for x in range(3)]
            if layer.vector_gate:
                gate_in = [act[layer.vector_act](p) for p in pre]
                g = sum(float(layer.wsv.weight[o, q]) * gate_in[q] for q in range(layer.so)) + float(layer.wsv.bias[o])
                factor = 1 / (1 + math.exp(-g))
            elif layer.vector_act is not None:
                factor = act[layer.vector_act](math.sqrt(max(sum(t * t for t in vec), 1e-8)))
            else:
                factor = 1.0
            v_out[i, o] = torch.tensor([t * factor for t in vec], dtype=s.dtype)
        s_out[i] = torch.tensor([act[layer.scalar_act](p) for p in pre], dtype=s.dtype)
    return s_out, v_out


@pytest.mark.parametrize("vector_gate,activations", [
    (False, ("relu", "sigmoid")),   # gvp-pytorch defaults: norm gating of vectors
    (True, ("relu", None)),         # ESM-GearNet: gate sigmoid(wsv(s))
    (True, ("relu", "sigmoid")),    # gate sigmoid(wsv(sigmoid(s)))
    (False, (None, None)),
])
def test_gvp_matches_hand_math(vector_gate, activations):
    torch.manual_seed(0)
    layer = GVP((3, 2), (4, 2), h_dim=3, activations=activations, vector_gate=vector_gate).double()
    s, v = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, 3, dtype=torch.float64)
    v[0] = 0.0  # zero vectors: the clamped norm keeps everything finite
    s_out, v_out = layer((s, v))
    s_ref, v_ref = hand_gvp(layer, s, v)
    torch.testing.assert_close(s_out, s_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(v_out, v_ref, rtol=1e-12, atol=1e-12)


def test_gvp_without_vector_inputs_gives_zero_vectors():
    layer = GVP((6, 0), (4, 3), activations=("relu", None)).double()
    s = torch.randn(7, 6, dtype=torch.float64)
    s_out, v_out = layer(s)
    torch.testing.assert_close(s_out, torch.relu(s @ layer.ws.weight.T + layer.ws.bias))
    assert v_out.shape == (7, 3, 3) and not v_out.any()
    scalar_only = GVP((6, 0), (4, 0), activations=(None, None)).double()
    torch.testing.assert_close(scalar_only(s), s @ scalar_only.ws.weight.T + scalar_only.ws.bias)


def test_gvp_without_vector_outputs_returns_scalars():
    layer = GVP((3, 2), (5, 0), activations=("relu", None)).double()
    s, v = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, 3, dtype=torch.float64)
    out = layer((s, v))
    assert isinstance(out, torch.Tensor)
    vh = torch.einsum("hc,ncx->nhx", layer.wh.weight, v)
    torch.testing.assert_close(out, torch.relu(layer.ws(torch.cat([s, vh.norm(dim=-1)], -1))))


def test_gvp_parameter_names_are_gvp_pytorchs():
    assert set(GVP((3, 2), (4, 2), vector_gate=True).state_dict()) == {
        "dummy_param", "wh.weight", "ws.weight", "ws.bias", "wv.weight", "wsv.weight", "wsv.bias"}
    assert set(GVP((3, 2), (4, 2)).state_dict()) == {"dummy_param", "wh.weight", "ws.weight", "ws.bias", "wv.weight"}
    assert set(GVP((3, 0), (4, 2), vector_gate=True).state_dict()) == {"dummy_param", "ws.weight", "ws.bias"}
    layer = GVP((3, 2), (4, 5), vector_gate=True)
    assert layer.wh.weight.shape == (5, 2) and layer.ws.weight.shape == (4, 3 + 5)
    assert layer.wv.weight.shape == (5, 5) and layer.wsv.weight.shape == (5, 4)
    conv_layer = GVPConvLayer((8, 2), (4, 1), vector_gate=True)
    names = set(conv_layer.state_dict())
    assert "conv.message_func.0.ws.weight" in names and "ff_func.1.wsv.bias" in names
    assert {"norm.0.scalar_norm.weight", "dropout.1.vdropout.dummy_param"} <= names
    assert conv_layer.conv.message_func[0].ws.weight.shape == (8, 2 * 8 + 4 + 2 * 2 + 1)
    assert conv_layer.ff_func[0].ws.weight.shape == (32, 8 + 4)


def test_gvp_weights_are_the_parameters():
    layer = GVP((3, 2), (4, 2), vector_gate=True)
    w = layer.weights()
    assert w.wh is layer.wh.weight and w.wsv_bias is layer.wsv.bias and w.vector_gate
    assert w.scalar_act == "relu" and w.vector_act == "sigmoid"
    assert GVP((3, 2), (4, 0), vector_gate=True).weights().vector_gate is False


def test_activation_functions_map_to_names():
    assert activation_name(F.relu) == "relu" and activation_name(torch.sigmoid) == "sigmoid"
    assert activation_name(None) is None and activation_name("silu") == "silu"
    with pytest.raises(ValueError, match="unsupported activation"):
        activation_name(torch.tanh)
    with pytest.raises(ValueError, match="unknown activation"):
        GVP((2, 1), (2, 1), activations=("gelu", None))


def test_gvp_rejects_bad_inputs():
    layer = GVP((3, 2), (4, 2))
    with pytest.raises(ValueError, match=r"scalar input must be \[n, 3\]"):
        layer((torch.randn(5, 4), torch.randn(5, 2, 3)))
    with pytest.raises(ValueError, match=r"vector input must be \[5, 2, 3\]"):
        layer((torch.randn(5, 3), torch.randn(5, 3, 3)))
    with pytest.raises(ValueError, match="needs vector input"):
        layer(torch.randn(5, 3))
    with pytest.raises(ValueError, match="in_dims"):
        GVP(3, (4, 2))


def test_gvp_is_equivariant():
    torch.manual_seed(1)
    layer = GVP((3, 4), (5, 3), vector_gate=True).double()
    s, v = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 4, 3, dtype=torch.float64)
    rot = random_rotation()
    s1, v1 = layer((s, v))
    s2, v2 = layer((s, v @ rot.T))
    torch.testing.assert_close(s2, s1)
    torch.testing.assert_close(v2, v1 @ rot.T)


def test_layer_norm_definition():
    torch.manual_seed(2)
    norm = GVPLayerNorm((5, 3)).double()
    with torch.no_grad():
        norm.scalar_norm.weight.uniform_(0.5, 1.5)
        norm.scalar_norm.bias.uniform_(-1, 1)
    s, v = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 3, 3, dtype=torch.float64)
    v[1] = 0.0  # all-zero vectors stay zero (clamped squared norms), no NaN
    s_out, v_out = norm((s, v))
    mean, var = s.mean(-1, keepdim=True), s.var(-1, unbiased=False, keepdim=True)
    expected_s = (s - mean) / torch.sqrt(var + 1e-5) * norm.scalar_norm.weight + norm.scalar_norm.bias
    torch.testing.assert_close(s_out, expected_s)
    for i in range(4):
        squared = [max(float((v[i, c] ** 2).sum()), 1e-8) for c in range(3)]
        torch.testing.assert_close(v_out[i], v[i] / math.sqrt(sum(squared) / 3))
    assert not v_out[1].any()
    scalar_only = GVPLayerNorm((5, 0)).double()
    torch.testing.assert_close(scalar_only(s), F.layer_norm(s, (5,)))


def test_dropout_eval_is_identity_and_train_drops_whole_channels():
    drop = GVPDropout(0.3)
    s, v = torch.randn(200, 8), torch.randn(200, 6, 3)
    drop.eval()
    s_e, v_e = drop((s, v))
    assert s_e is s and v_e is v
    drop.train()
    torch.manual_seed(3)
    s_t, v_t = drop((s, v))
    kept = v_t.abs().sum(-1) != 0
    torch.testing.assert_close(v_t[kept], v[kept] / 0.7)     # kept channels: all 3 coordinates scaled
    assert not v_t[~kept].any()                               # dropped channels: all 3 zero
    assert 0.2 < (~kept).float().mean() < 0.4
    scalar_kept = s_t != 0
    torch.testing.assert_close(s_t[scalar_kept], s[scalar_kept] / 0.7)
    plain = drop(s)  # a plain tensor is treated as scalars: element-wise dropout
    assert isinstance(plain, torch.Tensor) and 0 < (plain == 0).float().mean() < 0.5
    assert not GVPVectorDropout(1.0).train()(v).any()
    with pytest.raises(ValueError, match="drop_rate"):
        GVPVectorDropout(1.5)


def test_conv_layer_rejects_unsupported_modes_and_bad_edges():
    with pytest.raises(NotImplementedError):
        GVPConvLayer((4, 2), (2, 1), autoregressive=True)
    with pytest.raises(ValueError, match="aggr"):
        GVPConv((4, 2), (4, 2), (2, 1), aggr="add")
    conv = GVPConv((4, 2), (4, 2), (2, 1))
    x = (torch.randn(3, 4), torch.randn(3, 2, 3))
    edge_index = torch.tensor([[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="edge scalars"):
        conv(x, edge_index, (torch.randn(3, 2), torch.randn(2, 1, 3)))
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        conv(x, torch.tensor([[0, 5], [1, 2]]), (torch.randn(2, 2), torch.randn(2, 1, 3)))


def test_conv_layer_is_equivariant_and_isolated_nodes_keep_finite_values():
    torch.manual_seed(4)
    layer = GVPConvLayer((8, 3), (4, 1), vector_gate=True, activations=("relu", None)).double().eval()
    n = 6
    s, v = torch.randn(n, 8, dtype=torch.float64), torch.randn(n, 3, 3, dtype=torch.float64)
    edge_index = torch.tensor([[0, 1, 2, 3, 1], [1, 0, 1, 2, 3]])  # nodes 4 and 5 have no edges
    es, ev = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 1, 3, dtype=torch.float64)
    rot = random_rotation(seed=5)
    s1, v1 = layer((s, v), edge_index, (es, ev))
    s2, v2 = layer((s, v @ rot.T), edge_index, (es, ev @ rot.T))
    torch.testing.assert_close(s2, s1)
    torch.testing.assert_close(v2, v1 @ rot.T)
    assert torch.isfinite(s1).all() and torch.isfinite(v1).all()
    # An isolated node only sees its own features: same result as a graph of that node alone.
    s_alone, v_alone = layer((s[4:5], v[4:5]), torch.empty(2, 0, dtype=torch.long),
                             (es[:0], ev[:0]))
    torch.testing.assert_close(s1[4:5], s_alone)
    torch.testing.assert_close(v1[4:5], v_alone)


def test_node_mask_updates_only_masked_nodes():
    torch.manual_seed(6)
    layer = GVPConvLayer((8, 2), (4, 1)).double().eval()
    s, v = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 2, 3, dtype=torch.float64)
    edge_index = torch.tensor([[0, 1, 2, 3, 4], [1, 2, 3, 4, 0]])
    e = (torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 1, 3, dtype=torch.float64))
    mask = torch.tensor([True, False, True, False, False])
    full_s, full_v = layer((s, v), edge_index, e)
    s_m, v_m = layer((s.clone(), v.clone()), edge_index, e, node_mask=mask)
    torch.testing.assert_close(s_m[mask], full_s[mask])
    torch.testing.assert_close(v_m[mask], full_v[mask])
    torch.testing.assert_close(s_m[~mask], s[~mask])
    torch.testing.assert_close(v_m[~mask], v[~mask])


def test_reset_parameters_reinitialises():
    layer = GVPConvLayer((8, 2), (4, 1), vector_gate=True)
    with torch.no_grad():
        for p in layer.parameters():
            p.fill_(0.0)
    layer.reset_parameters()
    assert layer.conv.message_func[0].ws.weight.abs().sum() > 0
    assert layer.ff_func[1].wsv.weight.abs().sum() > 0
    assert torch.all(layer.norm[0].scalar_norm.weight == 1)


def test_layers_run_through_the_ops_with_their_backend(monkeypatch):
    """GVP and GVPConv compute through esmgear_fast.ops.gvp / gvp_conv_message and pass their
    backend; an unknown backend name is rejected by the op, not silently ignored."""
    calls = []
    real_gvp, real_conv = esmgear_fast.ops.gvp, esmgear_fast.ops.gvp_conv_message

    def spy_gvp(*args, backend=None):
        calls.append(("gvp", backend))
        return real_gvp(*args, backend=backend)

    def spy_conv(*args, num_nodes=None, backend=None):
        calls.append(("conv", backend))
        return real_conv(*args, num_nodes=num_nodes, backend=backend)

    monkeypatch.setattr(esmgear_fast.ops, "gvp", spy_gvp)
    monkeypatch.setattr(esmgear_fast.ops, "gvp_conv_message", spy_conv)
    GVP((3, 2), (4, 2), backend="reference")((torch.randn(2, 3), torch.randn(2, 2, 3)))
    layer = GVPConvLayer((4, 2), (2, 1), n_feedforward=1, backend="reference")
    layer((torch.randn(3, 4), torch.randn(3, 2, 3)), torch.tensor([[0, 1], [1, 2]]),
          (torch.randn(2, 2), torch.randn(2, 1, 3)))
    assert calls == [("gvp", "reference"), ("conv", "reference"), ("gvp", "reference")]
    monkeypatch.undo()
    with pytest.raises(ValueError, match="unknown backend"):
        GVP((3, 2), (4, 2), backend="no-such-backend")((torch.randn(2, 3), torch.randn(2, 2, 3)))


def test_conv_layer_compiles_without_graph_breaks():
    """torch.compile(fullgraph=True) captures the whole layer (shape checks, tuple plumbing, the
    ops); aot_eager keeps the test fast while still tracing forward and backward."""
    torch.manual_seed(9)
    layer = GVPConvLayer((16, 4), (8, 1), activations=("relu", None), vector_gate=True).eval()
    s, v = torch.randn(20, 16), torch.randn(20, 4, 3)
    edge_index = torch.randint(0, 20, (2, 60))
    e = (torch.randn(60, 8), torch.randn(60, 1, 3))
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (layer, compiled):
        x = (s.clone().requires_grad_(True), v.clone().requires_grad_(True))
        out_s, out_v = fn(x, edge_index, e)
        ((out_s ** 2).sum() + out_v.sum()).backward()
        results.append((out_s, out_v, x[0].grad, x[1].grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
