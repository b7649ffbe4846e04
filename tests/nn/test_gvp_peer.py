"""GVP layers against gvp-pytorch itself, as vendored by ProteinWorkshop (the optional peer).

ProteinWorkshop's package ``__init__`` imports heavy dependencies (hydra, lightning, graphein), so
only its file ``models/graph_encoders/layers/gvp.py`` (a copy of drorlab/gvp-pytorch that imports
just torch, torch_scatter and torch_geometric) is loaded, by path. Install for these tests::

    pip install --no-deps --ignore-requires-python proteinworkshop-0.2.5-py3-none-any.whl
    pip install --no-deps torch_geometric==2.6.1 psutil     # torch_scatter too

Same state dict loaded with ``strict=True`` into both, same inputs (real protein graphs), same RNG
seed for dropout: forward outputs and all gradients must agree.
"""
import importlib.util
import os
import sys

import pytest
import torch

import esmgear_fast
from esmgear_fast.data import collate
from esmgear_fast.models import gvp_edge_features, gvp_radius_graph
from esmgear_fast.nn import GVP, GVPConv, GVPConvLayer, GVPDropout, GVPLayerNorm
from esmgear_fast.testing import real_proteins


def load_gvp_pytorch():
    pytest.importorskip("torch_scatter")
    pytest.importorskip("torch_geometric.nn")
    name = "_proteinworkshop_gvp_layers"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("proteinworkshop")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("proteinworkshop (the gvp-pytorch peer) is not installed")
    path = os.path.join(list(spec.submodule_search_locations)[0], "models", "graph_encoders", "layers", "gvp.py")
    file_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(file_spec)
    sys.modules[name] = module  # torch_geometric's MessagePassing looks the module up by name
    file_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def peer():
    return load_gvp_pytorch()


@pytest.fixture(scope="module")
def real_graph():
    """A small real protein, its 10 A radius graph and ESM-GearNet's edge features."""
    b = collate(real_proteins(n=2, min_len=30, max_len=60))
    edge_index = gvp_radius_graph(b.pos, b.batch)
    edge_s, edge_v = gvp_edge_features(b.pos, edge_index)
    return b, edge_index, edge_s, edge_v


PEER_ACTIVATIONS = {("relu", "sigmoid"): (torch.relu, torch.sigmoid), ("relu", None): (torch.relu, None),
                    (None, None): (None, None)}


def assert_grads_match(ours, theirs, atol, rtol=1e-6):
    their_grads = {k: p.grad for k, p in theirs.named_parameters()}
    for k, p in ours.named_parameters():
        if their_grads[k] is None:
            assert p.grad is None or not p.grad.any(), k
        else:
            torch.testing.assert_close(p.grad, their_grads[k], rtol=rtol, atol=atol,
                                       msg=lambda m, k=k: f"{k}: {m}")


def leaf(t):
    return t.detach().clone().requires_grad_(True)


@pytest.mark.parametrize("in_dims,out_dims", [((6, 3), (5, 4)), ((6, 0), (5, 4)), ((6, 3), (5, 0)), ((6, 2), (5, 2))])
@pytest.mark.parametrize("vector_gate", [False, True])
@pytest.mark.parametrize("activations", list(PEER_ACTIVATIONS))
def test_gvp_matches_gvp_pytorch(peer, in_dims, out_dims, vector_gate, activations):
    torch.manual_seed(0)
    theirs = peer.GVP(in_dims, out_dims, activations=PEER_ACTIVATIONS[activations], vector_gate=vector_gate).double()
    ours = GVP(in_dims, out_dims, activations=activations, vector_gate=vector_gate).double()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    s, v = torch.randn(9, in_dims[0], dtype=torch.float64), torch.randn(9, in_dims[1], 3, dtype=torch.float64)
    if in_dims[1]:
        v[2] = 0.0
    inputs = []
    for module in (ours, theirs):
        x = (leaf(s), leaf(v)) if in_dims[1] else leaf(s)
        out = module(x)
        outs = out if isinstance(out, tuple) else (out,)
        sum(((o.double() * (k + 1.5)) ** 2).sum() for k, o in enumerate(outs)).backward()
        inputs.append((x, outs))
    (x1, o1), (x2, o2) = inputs
    assert len(o1) == len(o2)
    for a, b in zip(o1, o2):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-10, atol=1e-12)
    for a, b in zip(x1 if isinstance(x1, tuple) else (x1,), x2 if isinstance(x2, tuple) else (x2,)):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)
    assert_grads_match(ours, theirs, atol=1e-12)


def test_layer_norm_and_dropout_match_gvp_pytorch(peer):
    torch.manual_seed(1)
    theirs, ours = peer.LayerNorm((7, 3)), GVPLayerNorm((7, 3))
    with torch.no_grad():
        theirs.scalar_norm.weight.uniform_(0.5, 2)
        theirs.scalar_norm.bias.uniform_(-1, 1)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    s, v = torch.randn(11, 7), torch.randn(11, 3, 3)
    v[4] = 0.0
    for a, b in zip(ours((s, v)), theirs((s, v))):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(GVPLayerNorm((7, 0))(s), peer.LayerNorm((7, 0))(s), rtol=0, atol=0)

    their_drop, our_drop = peer.Dropout(0.25), GVPDropout(0.25)
    our_drop.load_state_dict(their_drop.state_dict(), strict=True)
    for seed in range(3):
        torch.manual_seed(seed)
        expected = their_drop((s, v))
        torch.manual_seed(seed)
        got = our_drop((s, v))
        for a, b in zip(got, expected):  # same RNG draws in the same order: bitwise equal
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("n_layers", [1, 3])
def test_gvp_conv_matches_gvp_pytorch_on_a_real_graph(peer, real_graph, n_layers):
    b, edge_index, edge_s, edge_v = real_graph
    torch.manual_seed(2)
    theirs = peer.GVPConv((10, 3), (10, 3), (16, 1), n_layers=n_layers, activations=(torch.relu, None),
                          vector_gate=True).double()
    ours = GVPConv((10, 3), (10, 3), (16, 1), n_layers=n_layers, activations=("relu", None),
                   vector_gate=True).double()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    n = b.num_nodes
    s, v = torch.randn(n, 10, dtype=torch.float64), torch.randn(n, 3, 3, dtype=torch.float64)
    es, ev = edge_s.double(), edge_v.double()
    results = []
    for module in (ours, theirs):
        x, e = (leaf(s), leaf(v)), (leaf(es), leaf(ev))
        out_s, out_v = module(x, edge_index, e)
        ((out_s ** 2).sum() + (out_v ** 3).sum()).backward()
        results.append((out_s, out_v, [t.grad for t in x + e]))
    for a, b2 in zip(results[0][:2], results[1][:2]):
        torch.testing.assert_close(a, b2, rtol=1e-10, atol=1e-12)
    for a, b2 in zip(results[0][2], results[1][2]):
        torch.testing.assert_close(a, b2, rtol=1e-10, atol=1e-12)
    assert_grads_match(ours, theirs, atol=1e-10)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gvp_conv_layer_matches_gvp_pytorch_on_a_real_graph(peer, real_graph, train, dtype):
    """ESM-GearNet's layer configuration (vector gate, activations (relu, None), dropout 0.1) on a
    real radius graph; in training mode both draw the same dropout masks from the same seed."""
    b, edge_index, edge_s, edge_v = real_graph
    torch.manual_seed(3)
    theirs = peer.GVPConvLayer((16, 4), (16, 1), drop_rate=0.1, activations=(torch.relu, None),
                               vector_gate=True).to(dtype)
    ours = GVPConvLayer((16, 4), (16, 1), drop_rate=0.1, activations=("relu", None), vector_gate=True).to(dtype)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.train(train)
    ours.train(train)
    n = b.num_nodes
    s, v = torch.randn(n, 16, dtype=dtype), torch.randn(n, 4, 3, dtype=dtype)
    es, ev = edge_s.to(dtype), edge_v.to(dtype)
    results = []
    for module in (ours, theirs):
        x = (leaf(s), leaf(v))
        torch.manual_seed(4)
        out_s, out_v = module(x, edge_index, (es, ev))
        ((out_s * torch.arange(16, dtype=dtype)).sum() + (out_v ** 2).sum()).backward()
        results.append((out_s, out_v, x[0].grad, x[1].grad))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-11)
    for a, b2 in zip(results[0], results[1]):
        torch.testing.assert_close(a, b2, **tol)
    assert_grads_match(ours, theirs, **tol)
    if train:  # dropout really was active (else this test would not test it)
        ours.eval()
        eval_s, _ = ours((s, v), edge_index, (es, ev))
        assert not torch.allclose(eval_s, results[0][0])
