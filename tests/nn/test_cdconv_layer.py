"""esmgear_fast.nn.CDConv: an independent hand computation (no peer), the original's parameter names and
initialisation, the receptive field (vs torch_cluster), and parity with ProteinWorkshop's copy of the
original layer (forward and backward) on real proteins.

The peer is ``proteinworkshop/models/graph_encoders/layers/cdconv.py`` (ProteinWorkshop 0.2.5, a copy
of hehefan/Continuous-Discrete-Convolution). Importing the ``proteinworkshop`` package pulls in
graphein, hydra, wandb...; so only that one file is loaded with importlib, after stubbing
``torch_sparse`` (compiled; the file only uses it for an ``isinstance`` branch never taken with
tensor edges). Needs ``torch_geometric`` (pure Python) and ``torch_cluster``/``torch_scatter``.
"""
import importlib.util
import math
import sys
import types

import pytest
import torch

from esmgear_fast.data import collate
from esmgear_fast.models import residue_frames
from esmgear_fast.nn import CDConv
from esmgear_fast.testing import real_complexes, real_proteins


def load_proteinworkshop_cdconv_layers():
    """ProteinWorkshop's ``layers/cdconv.py`` as a module, or skip."""
    pytest.importorskip("torch_geometric")
    pytest.importorskip("torch_scatter")
    pytest.importorskip("torch_cluster")
    spec = importlib.util.find_spec("proteinworkshop")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("proteinworkshop is not installed")
    path = f"{list(spec.submodule_search_locations)[0]}/models/graph_encoders/layers/cdconv.py"
    if "torch_sparse" not in sys.modules:
        try:
            import torch_sparse  # noqa: F401
        except ImportError:
            stub = types.ModuleType("torch_sparse")
            stub.SparseTensor = type("SparseTensor", (), {})
            stub.set_diag = None
            sys.modules["torch_sparse"] = stub
    name = "_proteinworkshop_cdconv_layers"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # torch_geometric's MessagePassing inspects its defining module by name
    module_spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------------------
# Independent hand computation (runs without any peer library)


def hand_cdconv(x, pos, seq, ori, edges, Ws, bs, W, r, l):
    """CDConv written out with Python floats, one edge and one scalar at a time."""
    n, c_in = len(x), len(x[0])
    k_dim = len(bs[-1][0])
    c_out = len(W[0])
    s = l // 2
    aggregated = [[0.0] * (k_dim * c_in) for _ in range(n)]
    for j, i in edges:
        delta = [pos[j][a] - pos[i][a] for a in range(3)]
        d = math.sqrt(sum(v * v for v in delta))
        unit = [v / (d + 1e-9) for v in delta]
        t = [sum(ori[i][row][a] * unit[a] for a in range(3)) for row in range(3)]
        agree = [sum(ori[i][row][a] * ori[j][row][a] for a in range(3)) for row in range(3)]
        offset = max(-s, min(s, seq[j] - seq[i]))
        h = t + agree + [d]
        for Wm, bm in zip(Ws, bs):
            Wo, bo = Wm[offset + s], bm[offset + s]
            h = [sum(h[a] * Wo[a][b] for a in range(len(h))) + bo[b] for b in range(len(bo))]
            h = [v if v > 0 else 0.2 * v for v in h]
        smooth = 0.5 - 0.5 * math.tanh(16.0 * (d / r) * (abs(offset) / s) - 14.0)
        for k in range(k_dim):
            for c in range(c_in):
                aggregated[i][k * c_in + c] += h[k] * smooth * x[j][c]
    return [[sum(aggregated[i][m] * W[m][o] for m in range(k_dim * c_in)) for o in range(c_out)] for i in range(n)]


BACKENDS = ["auto", "reference"]  # "auto": the fused kernel esmgear_fast picks for the device


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_hand_computation_on_real_fragment(backend):
    # 6 consecutive residues of a real chain with a gap in the numbering and a large jump, so that
    # clamped offsets, the smooth window and several WeightNets are all exercised.
    protein = real_proteins(1, min_len=40)[0]
    pos = protein.pos[10:16].double()
    seq = torch.tensor([3, 4, 5, 9, 10, 40])
    ori = residue_frames(pos)
    torch.manual_seed(0)
    layer = CDConv(r=7.0, l=5, kernel_channels=[4, 3], in_channels=2, out_channels=3, backend=backend).double()
    with torch.no_grad():
        for b in layer.WeightNet.bs:
            b.uniform_(-0.5, 0.5)  # non-zero biases, so their indexing is tested too
    x = torch.randn(6, 2, dtype=torch.float64)
    out = layer(x, pos, seq, ori)
    dist = torch.cdist(pos, pos)
    edges = [(j, i) for i in range(6) for j in range(6) if dist[i, j] < 7.0]
    assert (0, 0) in edges and len(edges) < 36  # self loops present, some pairs out of range
    expected = hand_cdconv(x.tolist(), pos.tolist(), seq.tolist(), ori.tolist(), edges,
                           [w.tolist() for w in layer.WeightNet.Ws], [b.tolist() for b in layer.WeightNet.bs],
                           layer.W.tolist(), 7.0, 5)
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-12)
    # Explicit edges give the same result.
    edge_index = torch.tensor(edges).t()
    torch.testing.assert_close(layer(x, pos, seq, ori, edge_index=edge_index), out, rtol=1e-12, atol=1e-14)


def test_parameter_names_shapes_and_initialisation():
    torch.manual_seed(0)
    layer = CDConv(r=8.0, l=21, kernel_channels=[32, 16], in_channels=64, out_channels=48)
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert shapes == {"WeightNet.Ws.0": (21, 7, 32), "WeightNet.Ws.1": (21, 32, 16), "WeightNet.bs.0": (21, 32),
                      "WeightNet.bs.1": (21, 16), "W": (16 * 64, 48)}
    # Original: U(-1/sqrt(fan), 1/sqrt(fan)) with fan = product of the dims after the first of the declared
    # size ([l, 7, K0] -> 7*K0; [l, K0, K1] -> K0*K1; W declared [K*C_in, C_out] -> C_out); zero biases.
    for p, fan in ((layer.WeightNet.Ws[0], 7 * 32), (layer.WeightNet.Ws[1], 32 * 16), (layer.W, 48)):
        p = p.detach()
        bound = 1.0 / math.sqrt(fan)
        assert p.abs().max() <= bound
        assert p.abs().max() > 0.95 * bound and abs(float(p.mean())) < 0.05 * bound
    assert all(float(b.detach().abs().max()) == 0.0 for b in layer.WeightNet.bs)
    with torch.no_grad():
        layer.W.fill_(3.0)
    layer.reset_parameters()
    assert layer.W.abs().max() <= 1.0 / math.sqrt(48)


def test_bad_inputs_raise_clear_errors():
    layer = CDConv(r=8.0, l=21, kernel_channels=[8], in_channels=4, out_channels=4)
    pos = real_proteins(1)[0].pos[:10]
    ori = residue_frames(pos)
    seq = torch.arange(10)
    x = torch.randn(10, 4)
    with pytest.raises(ValueError, match="x must be"):
        layer(torch.randn(10, 5), pos, seq, ori)
    with pytest.raises(ValueError, match="pos must be"):
        layer(x, pos[:, :2], seq, ori)
    with pytest.raises(ValueError, match="seq must be"):
        layer(x, pos, seq[:9], ori)
    with pytest.raises(ValueError, match="integer residue numbers"):
        layer(x, pos, seq.float(), ori)
    with pytest.raises(ValueError, match="ori must be"):
        layer(x, pos, seq, ori[:, :2])
    with pytest.raises(ValueError, match="NaN"):
        bad = pos.clone()
        bad[3, 0] = float("nan")
        layer(x, bad, seq, ori)
    with pytest.raises(ValueError, match="radius"):
        CDConv(r=0.0, l=21, kernel_channels=[8], in_channels=4, out_channels=4)
    with pytest.raises(ValueError, match="odd integer"):
        CDConv(r=8.0, l=20, kernel_channels=[8], in_channels=4, out_channels=4)
    with pytest.raises(ValueError, match="kernel_channels"):
        CDConv(r=8.0, l=21, kernel_channels=[], in_channels=4, out_channels=4)
    # [N, 1] residue numbers and [N, 9] frames (ProteinWorkshop's layout) are accepted.
    torch.testing.assert_close(layer(x, pos, seq[:, None], ori.reshape(10, 9)), layer(x, pos, seq, ori))


@pytest.mark.parametrize("radius", [8.0, 20.0])
def test_receptive_field_matches_torch_cluster(radius):
    torch_cluster = pytest.importorskip("torch_cluster")
    proteins = real_proteins(3, min_len=50, max_len=300) + real_complexes(1, min_len=1000)
    batch = collate(proteins)
    assert int(batch.num_residues.max()) >= 1000
    layer = CDConv(r=radius, l=21, kernel_channels=[8], in_channels=4, out_channels=4)
    ours = layer.edges(batch.pos, batch.batch)
    row, col = torch_cluster.radius(batch.pos, batch.pos, radius, batch.batch, batch.batch, max_num_neighbors=9999)
    # Original: edges without a cap, then self loops removed and re-added once.
    keep = row != col
    peer = torch.cat([torch.stack([col[keep], row[keep]]), torch.arange(batch.num_nodes).repeat(2, 1)], dim=1)
    n = batch.num_nodes
    ours_keys = torch.sort(ours[0] * n + ours[1]).values
    peer_keys = torch.sort(peer[0] * n + peer[1]).values
    assert torch.equal(ours_keys, peer_keys)


# ----------------------------------------------------------------------------------------------------------
# Parity with the original layer (ProteinWorkshop's copy)


@pytest.mark.parametrize("dtype,backend", [(torch.float32, "auto"), (torch.float32, "reference"),
                                           (torch.float64, "auto")])
def test_matches_proteinworkshop_layer_on_real_proteins(dtype, backend):
    pw = load_proteinworkshop_cdconv_layers()
    batch = collate(real_proteins(3, min_len=60, max_len=250))
    pos = batch.pos.to(dtype)
    seq = batch.residue_number  # real author numbering (gaps included)
    ori = residue_frames(pos, batch.batch)
    torch.manual_seed(1)
    peer = pw.CDConv(r=12.0, l=21, kernel_channels=[32], in_channels=16, out_channels=24).to(dtype)
    ours = CDConv(r=12.0, l=21, kernel_channels=[32], in_channels=16, out_channels=24, backend=backend).to(dtype)
    with torch.no_grad():
        peer.WeightNet.bs[0].uniform_(-0.2, 0.2)
    ours.load_state_dict(peer.state_dict(), strict=True)
    x = torch.randn(batch.num_nodes, 16, dtype=dtype, requires_grad=True)
    x_peer = x.detach().clone().requires_grad_(True)
    out = ours(x, pos, seq, ori, batch.batch)
    ref = peer(x_peer, pos, seq[:, None], ori, batch.batch)
    # The original computes |offset| / (l // 2) from int64 tensors, i.e. in float32 even in a float64
    # model, so float64 parity is only at float32 precision (the hand computation above checks float64).
    tol = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out, ref, **tol)
    assert out.abs().max() > 1e-3  # not trivially zero
    grad = torch.randn_like(out)
    ours_grads = torch.autograd.grad(out, [x, *ours.parameters()], grad)
    peer_grads = torch.autograd.grad(ref, [x_peer, *peer.parameters()], grad)
    for name, a, b in zip(["x"] + [k for k, _ in ours.named_parameters()], ours_grads, peer_grads):
        # Parameter gradients sum over every edge / residue: absolute tolerance relative to their scale.
        atol = tol["atol"] * max(1.0, float(b.abs().max()))
        torch.testing.assert_close(a, b, rtol=tol["rtol"], atol=atol, msg=lambda m, name=name: f"grad of {name}: {m}")


def test_state_dict_round_trip_with_proteinworkshop_layer():
    pw = load_proteinworkshop_cdconv_layers()
    ours = CDConv(r=8.0, l=21, kernel_channels=[32, 8], in_channels=16, out_channels=16)
    peer = pw.CDConv(r=8.0, l=21, kernel_channels=[32, 8], in_channels=16, out_channels=16)
    peer.load_state_dict(ours.state_dict(), strict=True)
    for (k, a), (k2, b) in zip(ours.state_dict().items(), peer.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
