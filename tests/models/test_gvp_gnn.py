"""GVPGNN, ESM-GearNet's GVP-GNN structure encoder: its graph and edge features against their
definitions (and torch_cluster), the whole encoder against ESM-GearNet's forward assembled from
gvp-pytorch's own layers (ProteinWorkshop's vendored copy, optional), SE(3) invariance and
equivariance on real structures, empty and one-residue proteins, checkpoint key mapping."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from esmgear_fast.data import collate
from esmgear_fast.models import GVPGNN, gvp_edge_features, gvp_radius_graph, gvp_rbf, gvp_state_dict
from esmgear_fast.models.gearnet import residue_one_hot
from esmgear_fast.testing import real_proteins

SMALL = dict(node_h_dim=(16, 4), edge_h_dim=(8, 1), num_layers=2)


def random_rigid_motion(seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=dtype))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q, 20 * torch.randn(3, generator=g, dtype=dtype)


@pytest.fixture(scope="module")
def proteins():
    return real_proteins(n=3, min_len=30, max_len=80)


@pytest.fixture(scope="module")
def batch(proteins):
    return collate(proteins)


# ------------------------------------------------------------------ graph and edge features

def test_radius_graph_definition(batch):
    """Edges j -> i within 10 A (strict), same protein, no self loops; targets with more than 32
    candidates keep their 32 nearest (checked against brute force on real proteins)."""
    pos = batch.pos.double()
    edge_index = gvp_radius_graph(batch.pos, batch.batch)
    got = {(int(j), int(i)) for j, i in edge_index.t()}
    dist = torch.cdist(pos, pos)
    capped = 0
    for i in range(batch.num_nodes):
        candidates = [j for j in range(batch.num_nodes)
                      if j != i and batch.batch[j] == batch.batch[i] and dist[i, j] < 10.0]
        mine = {j for (j, t) in got if t == i}
        if len(candidates) <= 32:
            assert mine == set(candidates), i
        else:
            capped += 1
            nearest = sorted(candidates, key=lambda j: (float(dist[i, j]), j))[:32]
            assert mine == set(nearest), i
    assert len(got) == edge_index.size(1)


def test_radius_graph_matches_torch_cluster_without_cap(batch):
    """TorchDrug's SpatialEdge uses torch_cluster.radius_graph; with no cap both give the same
    edges, and under the cap ours are the nearest of torch_cluster's full neighbourhood."""
    torch_cluster = pytest.importorskip("torch_cluster")
    full = torch_cluster.radius_graph(batch.pos, r=10.0, batch=batch.batch, loop=False, max_num_neighbors=4096)
    ours = gvp_radius_graph(batch.pos, batch.batch, max_num_neighbors=None)
    assert {tuple(e) for e in full.t().tolist()} == {tuple(e) for e in ours.t().tolist()}


def test_coincident_positions_have_no_edge():
    pos = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    edges = {tuple(e) for e in gvp_radius_graph(pos).t().tolist()}
    assert edges == {(0, 2), (2, 0), (1, 2), (2, 1)}


def test_edge_features_definition(batch):
    edge_index = gvp_radius_graph(batch.pos, batch.batch)
    edge_s, edge_v = gvp_edge_features(batch.pos.double(), edge_index)
    j, i = edge_index
    vec = batch.pos.double()[i] - batch.pos.double()[j]      # target minus source, not normalised
    torch.testing.assert_close(edge_v, vec.unsqueeze(1))
    d = vec.norm(dim=-1)
    for k in range(16):
        mu = 20.0 * k / 15
        torch.testing.assert_close(edge_s[:, k], torch.exp(-((d - mu) / 1.25) ** 2))
    torch.testing.assert_close(gvp_rbf(torch.tensor([0.0, 20.0]))[:, [0, -1]], torch.eye(2))


# ------------------------------------------------------------------ structure and names

def test_parameter_names_and_shapes_are_esm_gearnets():
    model = GVPGNN(input_dim=1280)
    sd = model.state_dict()
    expected = {
        "residue_embedding.weight": (1280, 1280),
        "W_v.0.scalar_norm.weight": (1280,), "W_v.1.ws.weight": (256, 1280), "W_v.1.dummy_param": (0,),
        "W_e.0.scalar_norm.weight": (16,), "W_e.1.wh.weight": (1, 1), "W_e.1.ws.weight": (64, 17),
        "W_e.1.wv.weight": (1, 1), "W_e.1.wsv.weight": (1, 64),
        "layers.4.conv.message_func.0.ws.weight": (256, 2 * 256 + 64 + 33),
        "layers.4.conv.message_func.0.wh.weight": (33, 33), "layers.0.conv.message_func.2.wsv.bias": (16,),
        "layers.0.ff_func.0.ws.weight": (1024, 256 + 32), "layers.0.ff_func.0.wh.weight": (32, 16), "layers.0.ff_func.1.wv.weight": (16, 32),
        "layers.3.dropout.1.vdropout.dummy_param": (0,), "layers.2.norm.1.scalar_norm.bias": (256,),
        "W_out.1.ws.weight": (256, 256 + 16), "W_out.1.wh.weight": (16, 16),
    }
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    assert "layers.5.conv.message_func.0.ws.weight" not in sd and "W_out.1.wv.weight" not in sd
    assert model.layers[0].conv.message_func[0].vector_gate and model.layers[0].conv.message_func[0].vector_act is None
    assert model.W_v[1].scalar_act is None and model.W_out[1].scalar_act == "relu"


def test_reset_parameters():
    model = GVPGNN(input_dim=21, **SMALL)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    model.reset_parameters()
    assert model.residue_embedding.weight.abs().sum() > 0 and model.W_e[1].wsv.weight.abs().sum() > 0
    assert model.layers[1].ff_func[0].ws.weight.abs().sum() > 0


# ------------------------------------------------------------------ peer: ESM-GearNet's forward on gvp-pytorch layers

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
    sys.modules[name] = module
    file_spec.loader.exec_module(module)
    return module


def esm_gearnet_gvpgnn(layer, input_dim, node_h_dim, edge_h_dim, num_layers, drop_rate=0.1):
    """ESM-GearNet's models.GVPGNN (its gearnet/gvp.py) re-assembled from gvp-pytorch layers
    (``layer.LayerNorm`` is ESM-GearNet's ``GVPLayerNorm``), with its forward: rbf of the
    C-alpha distance and ``pos[node_out] - pos[node_in]``, mean readout."""
    acts = (torch.relu, None)

    class Peer(nn.Module):
        def __init__(self):
            super().__init__()
            self.residue_embdding = nn.Linear(input_dim, input_dim, bias=False)
            self.W_v = nn.Sequential(layer.LayerNorm((input_dim, 0)),
                                     layer.GVP((input_dim, 0), node_h_dim, activations=(None, None), vector_gate=True))
            self.W_e = nn.Sequential(layer.LayerNorm((16, 1)),
                                     layer.GVP((16, 1), edge_h_dim, activations=(None, None), vector_gate=True))
            self.layers = nn.ModuleList(layer.GVPConvLayer(node_h_dim, edge_h_dim, drop_rate=drop_rate,
                                                           activations=acts, vector_gate=True)
                                        for _ in range(num_layers))
            self.W_out = nn.Sequential(layer.LayerNorm(node_h_dim),
                                       layer.GVP(node_h_dim, (node_h_dim[0], 0), activations=acts, vector_gate=True))

        def forward(self, x, pos, edge_index, batch, num_graphs):
            import torch_scatter

            h = self.residue_embdding(x)
            node_in, node_out = edge_index
            vec = pos[node_out] - pos[node_in]
            mu = torch.linspace(0.0, 20.0, 16, dtype=pos.dtype).view(1, -1)
            rbf = torch.exp(-((vec.norm(dim=-1).unsqueeze(-1) - mu) / (20.0 / 16)) ** 2)
            h = self.W_v(h)
            e = self.W_e((rbf, vec.unsqueeze(-2)))
            for conv_layer in self.layers:
                h = conv_layer(h, edge_index, e)
            node = self.W_out(h)
            return node, torch_scatter.scatter_mean(node, batch, dim=0, dim_size=num_graphs)

    return Peer()


def esm_gvp_checkpoint(structure_state):
    """A TorchDrug engine checkpoint of an ESM-GVP FusionNetwork task: the structure model's keys
    under ``model.structure_model.``, plus (ignored) sequence-model and head keys."""
    state = {"model.sequence_model.model.embed_tokens.weight": torch.zeros(33, 8),
             "mlp.layers.0.weight": torch.zeros(4, 4)}
    state.update({f"model.structure_model.{k}": v for k, v in structure_state.items()})
    return {"model": state, "optimizer": {}}


@pytest.mark.parametrize("train", [False, True])
def test_matches_esm_gearnet_forward_on_gvp_pytorch_layers(batch, train):
    """Same weights (via gvp_state_dict on an ESM-GVP style checkpoint, strict=True), same real
    batch and graph, same dropout RNG: node/graph features and all gradients agree."""
    layer = load_gvp_pytorch()
    torch.manual_seed(0)
    peer = esm_gearnet_gvpgnn(layer, 21, (16, 4), (8, 1), num_layers=2).double()
    ours = GVPGNN(input_dim=21, **SMALL).double()
    ours.load_state_dict(gvp_state_dict(esm_gvp_checkpoint(peer.state_dict())), strict=True)
    peer.train(train)
    ours.train(train)
    x = residue_one_hot(batch.residue_type).double()
    pos = batch.pos.double()
    edge_index = gvp_radius_graph(batch.pos, batch.batch)
    torch.manual_seed(1)
    node_p, graph_p = peer(x, pos, edge_index, batch.batch, batch.num_proteins)
    torch.manual_seed(1)
    out = ours(x, pos, batch.batch, batch.num_proteins)
    torch.testing.assert_close(out["node_feature"], node_p, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(out["graph_feature"], graph_p, rtol=1e-9, atol=1e-10)
    weights = torch.randn_like(graph_p)
    (graph_p * weights).sum().backward()
    (out["graph_feature"] * weights).sum().backward()
    peer_grads = dict(peer.named_parameters())
    for name, p in ours.named_parameters():
        peer_name = name.replace("residue_embedding", "residue_embdding")
        g = peer_grads[peer_name].grad
        if g is None:
            assert p.grad is None or not p.grad.any(), name
        else:
            torch.testing.assert_close(p.grad, g, rtol=1e-8, atol=1e-10, msg=lambda m, n=name: f"{n}: {m}")


# ------------------------------------------------------------------ SE(3)

def test_invariance_and_equivariance_under_rigid_motions(batch):
    torch.manual_seed(2)
    model = GVPGNN(input_dim=21, **SMALL).double().eval()
    x = residue_one_hot(batch.residue_type).double()
    pos = batch.pos.double()
    rot, shift = random_rigid_motion(3)
    hidden = []
    hooks = [layer.register_forward_hook(lambda m, i, o: hidden.append(o)) for layer in model.layers]
    out1 = model(x, pos, batch.batch, batch.num_proteins)
    out2 = model(x, pos @ rot.T + shift, batch.batch, batch.num_proteins)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(out2["node_feature"], out1["node_feature"], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(out2["graph_feature"], out1["graph_feature"], rtol=1e-9, atol=1e-10)
    assert len(hidden) == 4
    for (s1, v1), (s2, v2) in zip(hidden[:2], hidden[2:]):
        torch.testing.assert_close(s2, s1, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(v2, v1 @ rot.T, rtol=1e-9, atol=1e-10)
        assert v1.abs().max() > 1e-3  # the vectors are not trivially zero


# ------------------------------------------------------------------ edge cases

def test_empty_and_one_residue_proteins_in_a_batch(proteins):
    """A batch [protein, 1 residue, protein] gives each protein what it gets alone; the lone
    residue has no edges. An empty input gives empty node and zero graph features."""
    torch.manual_seed(4)
    model = GVPGNN(input_dim=21, **SMALL).double().eval()
    p1, p2 = proteins[0], proteins[1]
    pieces = [(residue_one_hot(p.residue_type).double(), p.pos.double()) for p in (p1, p2)]
    single = (torch.eye(21, dtype=torch.float64)[3:4], torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64))
    order = [pieces[0], single, pieces[1]]
    x = torch.cat([o[0] for o in order])
    pos = torch.cat([o[1] for o in order])
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor([len(o[0]) for o in order]))
    out = model(x, pos, batch, 3)
    start = 0
    for k, (xs, ps) in enumerate(order):
        alone = model(xs, ps)
        torch.testing.assert_close(out["node_feature"][start:start + len(xs)], alone["node_feature"])
        torch.testing.assert_close(out["graph_feature"][k:k + 1], alone["graph_feature"])
        start += len(xs)
    empty = model(torch.zeros(0, 21, dtype=torch.float64), torch.zeros(0, 3, dtype=torch.float64),
                  torch.zeros(0, dtype=torch.long), 1)
    assert empty["node_feature"].shape == (0, 16)
    assert empty["graph_feature"].shape == (1, 16) and not empty["graph_feature"].any()


def test_rejects_bad_inputs(batch):
    model = GVPGNN(input_dim=21, **SMALL)
    x = residue_one_hot(batch.residue_type)
    with pytest.raises(ValueError, match="input_dim=21"):
        model(x[:, :20], batch.pos, batch.batch)
    with pytest.raises(ValueError, match="pos must be"):
        model(x, batch.pos[:-1], batch.batch)
    with pytest.raises(ValueError, match="edge_feature"):
        ei = gvp_radius_graph(batch.pos, batch.batch)
        model(x, batch.pos, batch.batch, edge_index=ei, edge_feature=(torch.zeros(3, 16), torch.zeros(3, 1, 3)))
    with pytest.raises(ValueError, match="readout"):
        GVPGNN(input_dim=21, readout="max")


def test_given_graph_and_edge_features_are_used(batch):
    torch.manual_seed(5)
    model = GVPGNN(input_dim=21, **SMALL).eval()
    x = residue_one_hot(batch.residue_type)
    ei = gvp_radius_graph(batch.pos, batch.batch)
    default = model(x, batch.pos, batch.batch, batch.num_proteins)
    explicit = model(x, batch.pos, batch.batch, batch.num_proteins, edge_index=ei,
                     edge_feature=gvp_edge_features(batch.pos, ei))
    torch.testing.assert_close(explicit["node_feature"], default["node_feature"])
    fewer = model(x, batch.pos, batch.batch, batch.num_proteins, edge_index=ei[:, ::2])
    assert not torch.allclose(fewer["node_feature"], default["node_feature"])


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-2), (torch.bfloat16, 5e-2)])
def test_half_precision_close_to_float32(dtype, tol):
    """A half-precision model (the ops compute in float32 inside; the vector norm of GVPLayerNorm
    too, or zero vectors would give 0/0 in float16) stays close to float32. Pinned to the
    reference backend: bfloat16 is wrong under the Triton CPU interpreter."""
    protein = real_proteins(n=1, min_len=30, max_len=60)[0]
    torch.manual_seed(8)
    model = GVPGNN(input_dim=21, backend="reference", **SMALL).eval()
    x = residue_one_hot(protein.residue_type)
    expected = model(x, protein.pos)["node_feature"]
    half = GVPGNN(input_dim=21, backend="reference", **SMALL).eval()
    half.load_state_dict(model.state_dict())
    half = half.to(dtype)
    got = half(x.to(dtype), protein.pos)["node_feature"]
    assert got.dtype == dtype and torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), expected, rtol=tol, atol=tol * expected.abs().max().item())


# ------------------------------------------------------------------ checkpoints

def test_checkpoint_key_mapping_round_trip(batch):
    torch.manual_seed(6)
    source = GVPGNN(input_dim=21, **SMALL).eval()
    esm_gearnet_keys = {k.replace("residue_embedding", "residue_embdding"): v for k, v in source.state_dict().items()}
    x = residue_one_hot(batch.residue_type)
    expected = source(x, batch.pos, batch.batch, batch.num_proteins)
    for checkpoint in (esm_gvp_checkpoint(esm_gearnet_keys),                          # ESM-GVP fusion task
                       {f"model.{k}": v for k, v in esm_gearnet_keys.items()},         # standalone GVPGNN task
                       esm_gearnet_keys):                                             # bare model state dict
        target = GVPGNN(input_dim=21, **SMALL).eval()
        sd = gvp_state_dict(checkpoint)
        assert "residue_embedding.weight" in sd and not any("sequence_model" in k or "mlp" in k for k in sd)
        target.load_state_dict(sd, strict=True)
        got = target(x, batch.pos, batch.batch, batch.num_proteins)
        torch.testing.assert_close(got["graph_feature"], expected["graph_feature"], rtol=0, atol=0)
    with pytest.raises(KeyError, match="no GVP-GNN parameters"):
        gvp_state_dict({"model": {"mlp.layers.0.weight": torch.zeros(1)}})


def test_default_configuration_runs_on_a_real_protein():
    """ESM-GVP's configuration (input 1280, (256, 16) nodes, (64, 1) edges, 5 layers) end to end,
    forward and backward, on a small real protein."""
    protein = real_proteins(n=1, min_len=30, max_len=40)[0]
    torch.manual_seed(7)
    model = GVPGNN()
    x = torch.randn(len(protein), 1280)
    out = model(x, protein.pos)
    assert out["node_feature"].shape == (len(protein), 256) and out["graph_feature"].shape == (1, 256)
    torch.testing.assert_close(out["graph_feature"][0], out["node_feature"].mean(0))
    assert (out["node_feature"] >= 0).all()  # relu output activation
    out["graph_feature"].sum().backward()
    assert model.layers[0].conv.message_func[0].wh.weight.grad.abs().sum() > 0


def test_bench_gvp_smoke(tmp_path):
    """benchmarks/bench_gvp.py runs end to end at tiny sizes and writes well-formed JSON lines."""
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "bench.jsonl"
    proc = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "bench_gvp.py"), "--sizes", "2", "--repeats", "1",
         "--node-dims", "16,4", "--depth", "1", "--input-dim", "21", "--max-len", "60", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    impls = {(r["task"], r["mode"], r["impl"]) for r in rows}
    for task in ("layer", "gvpgnn"):
        for mode in ("fwd", "fwd+bwd"):
            assert {(task, mode, "esmgear_fast"), (task, mode, "plain_pytorch")} <= impls
    for r in rows:
        assert r["median_ms"] > 0 and r["proteins"] == 2


def test_integer_input_is_a_clear_error():
    with pytest.raises(TypeError, match="floating-point"):
        GVPGNN(input_dim=21)(torch.zeros(5, 21, dtype=torch.long), torch.randn(5, 3))
