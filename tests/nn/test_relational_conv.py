"""GeometricRelationalGraphConv equals an independent TorchDrug-style computation (sparse N x N*R
adjacency product, then Linear), forward and backward; TorchDrug's parameter names."""
import pytest
import torch

from esmgear_fast.data import collate
from esmgear_fast.nn import GearNetGraph, GeometricRelationalGraphConv
from esmgear_fast.testing import real_proteins


def torchdrug_style_aggregate(x, edge_index, edge_type, num_relation, edge_weight=None):
    """TorchDrug's message_and_aggregate: sparse [N, N*R] adjacency (row j, column i*R + r), transposed
    and multiplied with x, viewed as [N, R*D]."""
    n = x.size(0)
    if edge_weight is None:
        edge_weight = torch.ones(edge_index.size(1), dtype=x.dtype)
    idx = torch.stack([edge_index[0], edge_index[1] * num_relation + edge_type])
    adjacency = torch.sparse_coo_tensor(idx, edge_weight, (n, n * num_relation), check_invariants=False)
    return torch.sparse.mm(adjacency.t(), x).view(n, num_relation * x.size(1))


def torchdrug_style_layer(layer, x, edge_index, edge_type, edge_weight=None):
    update = torchdrug_style_aggregate(x, edge_index, edge_type, layer.num_relation, edge_weight)
    out = torch.nn.functional.linear(update, layer.linear.weight, layer.linear.bias)
    out = out + torch.nn.functional.linear(x, layer.self_loop.weight, layer.self_loop.bias)
    if layer.batch_norm is not None:
        out = layer.batch_norm(out)
    return torch.relu(out)


@pytest.fixture(scope="module")
def graph():
    b = collate(real_proteins(n=4))
    edge_index, edge_type = GearNetGraph()(b)
    return b, edge_index, edge_type


@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_layer_matches_torchdrug_style(graph, batch_norm, weighted):
    b, ei, et = graph
    torch.manual_seed(0)
    layer = GeometricRelationalGraphConv(16, 24, 7, batch_norm=batch_norm).double()
    x = torch.randn(b.num_nodes, 16, dtype=torch.float64, requires_grad=True)
    w = torch.rand(ei.size(1), dtype=torch.float64) if weighted else None
    out = layer(x, ei, et, w)
    x2 = x.detach().clone().requires_grad_(True)
    ref = torchdrug_style_layer(layer, x2, ei, et, w)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    params = [p for p in layer.parameters()]
    grads = torch.autograd.grad(out, [x] + params, g)
    grads_ref = torch.autograd.grad(ref, [x2] + params, g)
    for a, r in zip(grads, grads_ref):
        torch.testing.assert_close(a, r)


def test_parameter_names_and_shapes():
    layer = GeometricRelationalGraphConv(21, 512, 7, batch_norm=True)
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert shapes == {
        "self_loop.weight": (512, 21), "self_loop.bias": (512,),
        "linear.weight": (512, 147), "linear.bias": (512,),
        "batch_norm.weight": (512,), "batch_norm.bias": (512,), "batch_norm.running_mean": (512,),
        "batch_norm.running_var": (512,), "batch_norm.num_batches_tracked": (),
    }
    assert set(GeometricRelationalGraphConv(4, 5, 3).state_dict()) == {
        "self_loop.weight", "self_loop.bias", "linear.weight", "linear.bias"}


def test_edge_features_follow_torchdrug(graph):
    b, ei, et = graph
    torch.manual_seed(1)
    layer = GeometricRelationalGraphConv(8, 8, 7, edge_input_dim=5, activation=None).double()
    x = torch.randn(b.num_nodes, 8, dtype=torch.float64)
    f = torch.randn(ei.size(1), 5, dtype=torch.float64)
    w = torch.rand(ei.size(1), dtype=torch.float64)
    n = b.num_nodes
    upd = torchdrug_style_aggregate(x, ei, et, 7, w)
    extra = torch.zeros(n * 7, 8, dtype=torch.float64).index_add_(0, ei[1] * 7 + et, layer.edge_linear(f) * w[:, None])
    expected = layer.linear(upd + extra.view(n, 56)) + layer.self_loop(x)
    torch.testing.assert_close(layer(x, ei, et, w, f), expected)


def test_reset_parameters_and_errors():
    layer = GeometricRelationalGraphConv(4, 5, 3, batch_norm=True, activation="gelu")
    before = layer.linear.weight.clone()
    layer.reset_parameters()
    assert not torch.equal(before, layer.linear.weight)
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        layer(torch.randn(3, 5), torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="activation"):
        GeometricRelationalGraphConv(4, 5, 3, activation="nope")


# ------------------------------------------------------------------ fused path (relational_linear)

def _saved_bytes(fn):
    """Bytes of the floating-point tensors autograd saves for backward while running fn (distinct
    storages; the integer graph structure is shared by all layers and not counted)."""
    seen = {}

    def pack(t):
        if t.is_floating_point():
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


@pytest.mark.parametrize("weighted", [False, True])
def test_fused_matches_unfused_real_graph(graph, weighted):
    from esmgear_fast.ops import relational_csr

    b, ei, et = graph
    torch.manual_seed(3)
    fused = GeometricRelationalGraphConv(32, 40, 7, batch_norm=True, backend="extension", fused=True)
    unfused = GeometricRelationalGraphConv(32, 40, 7, batch_norm=True, backend="extension", fused=False)
    unfused.load_state_dict(fused.state_dict())
    x = torch.randn(b.num_nodes, 32)
    w = torch.rand(ei.size(1)) + 0.5 if weighted else None
    csr = relational_csr(ei, et, b.num_nodes, 7)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out = fused(x1, ei, et, w, csr=csr)
    ref = torchdrug_style_layer(unfused, x2, ei, et, w)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x1] + list(fused.parameters()), g)
    grads_ref = torch.autograd.grad(ref, [x2] + list(unfused.parameters()), g)
    for a, r in zip(grads, grads_ref):
        torch.testing.assert_close(a, r, atol=1e-4, rtol=1e-4)


def test_fused_triton_small_real_graph():
    from esmgear_fast.ops import relational_csr

    b = collate(real_proteins(n=1, max_len=60))
    ei, et = GearNetGraph()(b)
    torch.manual_seed(4)
    layer = GeometricRelationalGraphConv(16, 24, 7, batch_norm=False, backend="triton")
    assert layer.uses_fused(torch.randn(1, 16))
    x = torch.randn(b.num_nodes, 16, requires_grad=True)
    out = layer(x, ei, et, csr=relational_csr(ei, et, b.num_nodes, 7))
    x2 = x.detach().clone().requires_grad_(True)
    ref = torchdrug_style_layer(layer, x2, ei, et)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x] + list(layer.parameters()), g)
    grads_ref = torch.autograd.grad(ref, [x2] + list(layer.parameters()), g)
    for a, r in zip(grads, grads_ref):
        torch.testing.assert_close(a, r, atol=1e-4, rtol=1e-4)


def test_fused_saves_no_aggregate_for_backward(graph):
    """The unfused layer keeps the [N, R*D] aggregate alive for Linear's weight gradient; the fused
    one saves only its inputs."""
    b, ei, et = graph
    layer = GeometricRelationalGraphConv(64, 64, 7, backend="extension", fused=False)
    x = torch.randn(b.num_nodes, 64, requires_grad=True)
    _, unfused_bytes = _saved_bytes(lambda: layer(x, ei, et))
    layer.fused = True
    _, fused_bytes = _saved_bytes(lambda: layer(x, ei, et))
    aggregate_bytes = b.num_nodes * 7 * 64 * 4
    assert unfused_bytes - fused_bytes >= aggregate_bytes


def test_fused_choice():
    x = torch.randn(3, 4)
    # On CPU the fused C++ kernel is the default only for large aggregates (>= 64 MB).
    assert not GeometricRelationalGraphConv(4, 5, 2, backend="extension").uses_fused(x)
    assert GeometricRelationalGraphConv(4, 5, 2, backend="extension", fused=True).uses_fused(x)
    big = GeometricRelationalGraphConv(512, 5, 8, backend="extension")
    assert big.uses_fused(torch.empty(4096, 512)) and not big.uses_fused(torch.empty(4095, 512))
    assert not GeometricRelationalGraphConv(4, 5, 2, backend="reference").uses_fused(x)
    assert not GeometricRelationalGraphConv(4, 5, 2, backend="extension", fused=False).uses_fused(x)
    assert not GeometricRelationalGraphConv(4, 5, 2, edge_input_dim=3).uses_fused(x)
    with pytest.raises(ValueError, match="fused=True"):
        GeometricRelationalGraphConv(4, 5, 2, edge_input_dim=3, fused=True).uses_fused(x)
