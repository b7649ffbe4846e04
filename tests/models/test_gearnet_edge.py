"""GearNet-Edge (line graph + edge layers) with the compiled spatial_line_graph op: against a
TorchDrug-style forward written independently here, across backends, and the benchmark's rows."""
import copy
import math

import pytest
import torch

import esmgear_fast.models as models
from esmgear_fast.data import collate
from esmgear_fast.models import GearNet, gearnet_edge_feature, residue_one_hot
from esmgear_fast.nn import GearNetGraph
from esmgear_fast.ops.spatial_line_graph import spatial_line_graph
from esmgear_fast.testing import real_proteins


@pytest.fixture(scope="module")
def edge_batch():
    b = collate(real_proteins(n=2, min_len=60, max_len=200))
    edge_index, edge_type = GearNetGraph()(b)
    return b, edge_index, edge_type


def torchdrug_style_line_graph(pos, edge_index, num_angle_bin):
    """TorchDrug's Graph.line_graph + SpatialLineGraph, transcribed (pairs by shared residue via
    repeat_interleave; angle by atan2 of |cross| and dot)."""
    node_in, node_out = edge_index
    ids = torch.arange(edge_index.size(1))
    edge_in = ids[node_out.argsort(stable=True)]
    edge_out = ids[node_in.argsort(stable=True)]
    degree_in = node_in.bincount(minlength=pos.size(0))
    degree_out = node_out.bincount(minlength=pos.size(0))
    size = degree_out * degree_in
    starts = (size.cumsum(0) - size).repeat_interleave(size)
    local = torch.arange(int(size.sum())) - starts
    inner = degree_in.repeat_interleave(size)
    a = edge_in[local // inner + (degree_out.cumsum(0) - degree_out).repeat_interleave(size)]
    b = edge_out[local % inner + (degree_in.cumsum(0) - degree_in).repeat_interleave(size)]
    v1 = pos[node_out[b]] - pos[node_in[b]]
    v2 = pos[node_in[a]] - pos[node_in[b]]
    angle = torch.atan2(torch.linalg.cross(v1, v2).norm(dim=-1), (v1 * v2).sum(-1))
    return torch.stack([a, b]), (angle / math.pi * num_angle_bin).long().clamp(max=num_angle_bin - 1)


def sparse_layer(layer, x, edge_index, edge_type):
    """TorchDrug's GeometricRelationalGraphConv: sparse adjacency times x, linear + self loop, BN, relu."""
    n, r = x.size(0), layer.num_relation
    idx = torch.stack([edge_index[0], edge_index[1] * r + edge_type])
    adj = torch.sparse_coo_tensor(idx, torch.ones(idx.size(1)), (n, n * r), check_invariants=False)
    update = torch.sparse.mm(adj.t(), x).view(n, r * x.size(1))
    return torch.relu(layer.batch_norm(layer.linear(update) + layer.self_loop(x)))


def torchdrug_style_edge_forward(model, x, pos, edge_index, edge_type, edge_feature, batch, num_graphs):
    line_index, line_type = torchdrug_style_line_graph(pos, edge_index, model.num_angle_bin)
    hiddens, h, edge_h = [], x, edge_feature
    for i, layer in enumerate(model.layers):
        hidden = sparse_layer(layer, h, edge_index, edge_type)
        if hidden.shape == h.shape:
            hidden = hidden + h
        edge_h = sparse_layer(model.edge_layers[i], edge_h, line_index, line_type)
        update = torch.zeros(x.size(0) * model.num_relation, edge_h.size(1))
        update = update.index_add(0, edge_index[1] * model.num_relation + edge_type, edge_h)
        hidden = hidden + torch.relu(layer.linear(update.view(x.size(0), -1)))
        hidden = model.batch_norms[i](hidden)
        hiddens.append(hidden)
        h = hidden
    node = torch.cat(hiddens, -1)
    return node, torch.zeros(num_graphs, node.size(1)).index_add(0, batch, node)


def test_models_reexports_the_compiled_op():
    assert models.spatial_line_graph is spatial_line_graph


@pytest.mark.parametrize("train", [True, False])
def test_gearnet_edge_matches_torchdrug_style(edge_batch, train):
    b, ei, et = edge_batch
    torch.manual_seed(0)
    model = GearNet(21, [24, 24, 32], 7, edge_input_dim=59, num_angle_bin=8).train(train)
    x = residue_one_hot(b.residue_type)
    feat = gearnet_edge_feature(b.residue_type, b.pos, ei, et)
    twin = copy.deepcopy(model)
    out = model(x, ei, et, b.batch, b.num_proteins, pos=b.pos, edge_feature=feat)
    node, graph = torchdrug_style_edge_forward(twin, x, b.pos, ei, et, feat, b.batch, b.num_proteins)
    torch.testing.assert_close(out["node_feature"], node, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["graph_feature"], graph, atol=1e-3, rtol=1e-4)
    if train:
        out["graph_feature"].square().mean().backward()
        graph.square().mean().backward()
        for (name, p), q in zip(model.named_parameters(), twin.parameters()):
            torch.testing.assert_close(p.grad, q.grad, atol=2e-3, rtol=2e-3, msg=name)


def test_extension_and_reference_backends_agree(edge_batch):
    """Whole GearNet-Edge with every op on the extension vs on the plain-PyTorch references."""
    b, ei, et = edge_batch
    torch.manual_seed(1)
    fast = GearNet(21, [16, 16], 7, edge_input_dim=59, num_angle_bin=8, backend="extension")
    slow = GearNet(21, [16, 16], 7, edge_input_dim=59, num_angle_bin=8, backend="reference")
    slow.load_state_dict(fast.state_dict())
    x = residue_one_hot(b.residue_type)
    outs = [m(x, ei, et, b.batch, b.num_proteins, pos=b.pos, residue_type=b.residue_type) for m in (fast, slow)]
    torch.testing.assert_close(outs[0]["node_feature"], outs[1]["node_feature"], atol=1e-4, rtol=1e-4)
    for out in outs:
        out["graph_feature"].sum().backward()
    for (name, p), q in zip(fast.named_parameters(), slow.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-3, rtol=1e-3, msg=name)


def test_line_graph_used_by_the_model_is_torchdrugs(edge_batch):
    b, ei, _ = edge_batch
    ours = spatial_line_graph(b.pos, ei, 8, backend="extension")
    theirs = torchdrug_style_line_graph(b.pos, ei, 8)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])


def test_edge_model_input_errors(edge_batch):
    b, ei, et = edge_batch
    model = GearNet(21, [8], 7, edge_input_dim=59, num_angle_bin=8)
    x = residue_one_hot(b.residue_type)
    with pytest.raises(ValueError, match="pos"):
        model(x, ei, et, b.batch)
    with pytest.raises(ValueError, match="edge_feature or residue_type"):
        model(x, ei, et, b.batch, pos=b.pos)
    bad = b.pos.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="row 3"):
        model(x, ei, et, b.batch, pos=bad, edge_feature=torch.zeros(ei.size(1), 59))


def test_bench_gearnet_edge_rows(tmp_path):
    """The GearNet-Edge part of benchmarks/bench_gearnet.py: line_graph rows, gearnet_edge fwd only
    when the memory cap is exceeded, and the part-by-part breakdown."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "bench.jsonl"
    proc = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "bench_gearnet.py"), "--quick", "--width", "8", "--depth", "2",
         "--edge-breakdown", "--max-edge-mem-gb", "0", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    keys = {(r["task"], r.get("mode"), r["impl"]) for r in rows}
    assert {("line_graph", "fwd", "extension"), ("line_graph", "fwd", "torchdrug_style"),
            ("gearnet_edge", "fwd", "extension"), ("gearnet_edge", "fwd", "torchdrug_style")} <= keys
    assert not any(r["task"] == "gearnet_edge" and r["mode"] == "fwd+bwd" for r in rows)
    assert "running fwd only" in proc.stdout
    parts = {(r["part"], r["impl"]) for r in rows if r["task"] == "gearnet_edge_breakdown"}
    assert {("full", "extension"), ("full", "torchdrug_style"), ("gemm", "shared"), ("line_graph", "extension"),
            ("edge_layers", "torchdrug_style")} <= parts
    for r in rows:
        assert r["median_ms"] > 0
        if r["task"] == "gearnet_edge_breakdown" and r["part"] == "full":
            assert 0 < r["gemm_share"]


def test_gearnet_edge_compiles_fullgraph(edge_batch):
    """The whole GearNet-Edge, line graph included, traces into one graph (data-dependent line-graph
    size handled by the op's fake kernel)."""
    b, ei, et = edge_batch
    torch.manual_seed(3)
    model = GearNet(21, [16, 16], 7, edge_input_dim=59, num_angle_bin=8).eval()
    x = residue_one_hot(b.residue_type)
    feat = gearnet_edge_feature(b.residue_type, b.pos, ei, et)

    def forward(pos, edge_index, edge_type, edge_feature):
        return model(x, edge_index, edge_type, b.batch, b.num_proteins, pos=pos, edge_feature=edge_feature)

    compiled = torch.compile(forward, fullgraph=True)
    with torch.no_grad():
        got, expected = compiled(b.pos, ei, et, feat), forward(b.pos, ei, et, feat)
    torch.testing.assert_close(got["node_feature"], expected["node_feature"], atol=1e-4, rtol=1e-4)
