"""relational_aggregate: the reference is the definition (checked in plain Python), every backend
equals the reference forward and backward, on random graphs and on real GearNet graphs."""
import pytest
import torch

import esmgear_fast as ef
from esmgear_fast import BackendUnavailableError
from esmgear_fast.data import collate
from esmgear_fast.nn import GearNetGraph
from esmgear_fast.ops import relational_aggregate
from esmgear_fast.testing import real_proteins

BACKENDS = ["extension", "reference"]


def random_graph(seed, n=40, d=6, r=7, e=250, dtype=torch.float64, weighted=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype)
    edge_index = torch.randint(0, n, (2, e), generator=g)
    edge_type = torch.randint(0, r, (e,), generator=g)
    w = torch.rand(e, generator=g, dtype=torch.float64).to(dtype) + 0.5 if weighted else None
    return x, edge_index, edge_type, w


def definition(x, edge_index, edge_type, r, w):
    n, d = x.shape
    out = [[0.0] * (r * d) for _ in range(n)]
    for e, (j, i) in enumerate(edge_index.t().tolist()):
        rel = int(edge_type[e])
        we = 1.0 if w is None else float(w[e])
        for k in range(d):
            out[i][rel * d + k] += we * float(x[j, k])
    return torch.tensor(out, dtype=torch.float64)


@pytest.fixture(scope="module")
def real_graph():
    b = collate(real_proteins(n=8))
    edge_index, edge_type = GearNetGraph()(b)
    x = torch.randn(b.num_nodes, 32, generator=torch.Generator().manual_seed(3))
    return x, edge_index, edge_type


@pytest.mark.parametrize("weighted", [False, True])
def test_reference_matches_definition(weighted):
    x, ei, et, w = random_graph(0, n=9, d=3, r=4, e=40, weighted=weighted)
    out = ef.reference.relational_aggregate(x, ei, et, 4, w)
    torch.testing.assert_close(out, definition(x, ei, et, 4, w))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weighted", [False, True])
def test_forward_backward_parity_random(backend, dtype, weighted):
    x, ei, et, w = random_graph(1, dtype=dtype, weighted=weighted)
    x.requires_grad_(True)
    if w is not None:
        w.requires_grad_(True)
    out = relational_aggregate(x, ei, et, 7, w, backend=backend)
    x_ref = x.detach().clone().requires_grad_(True)
    w_ref = None if w is None else w.detach().clone().requires_grad_(True)
    ref = ef.reference.relational_aggregate(x_ref, ei, et, 7, w_ref)
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad)
    if w is not None:
        torch.testing.assert_close(w.grad, w_ref.grad)


def test_parity_real_gearnet_graph(real_graph):
    x, ei, et = real_graph
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    w = torch.rand(ei.size(1), generator=torch.Generator().manual_seed(5))
    w1 = w.clone().requires_grad_(True)
    w2 = w.clone().requires_grad_(True)
    out = relational_aggregate(x1, ei, et, 7, w1, backend="extension")
    ref = ef.reference.relational_aggregate(x2, ei, et, 7, w2)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(w1.grad, w2.grad, atol=1e-4, rtol=1e-5)


def test_deterministic(real_graph):
    x, ei, et = real_graph
    a = relational_aggregate(x, ei, et, 7, backend="extension")
    b = relational_aggregate(x, ei, et, 7, backend="extension")
    assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_accumulates_in_float32(dtype, real_graph):
    x, ei, et = real_graph
    xh = x.to(dtype)
    out = relational_aggregate(xh, ei, et, 7, backend="extension")
    assert out.dtype == dtype
    exact = ef.reference.relational_aggregate(xh.double(), ei, et, 7)
    torch.testing.assert_close(out.double(), exact.to(dtype).double(), atol=0, rtol=0)
    xr = xh.clone().requires_grad_(True)
    relational_aggregate(xr, ei, et, 7, backend="extension").sum().backward()
    assert xr.grad.dtype == dtype


def test_gradcheck_float64():
    x, ei, et, w = random_graph(2, n=12, d=3, r=3, e=40)
    x.requires_grad_(True)
    w.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, w: relational_aggregate(x, ei, et, 3, w, backend="extension"), (x, w))
    assert torch.autograd.gradcheck(lambda x: relational_aggregate(x, ei, et, 3, backend="extension"), (x,))


def test_opcheck():
    x, ei, et, w = random_graph(3, n=12, d=3, r=3, e=40)
    op = torch.ops.esmgear_fast.relational_aggregate.default
    torch.library.opcheck(op, (x, ei, et, 3, w))
    torch.library.opcheck(op, (x.requires_grad_(True), ei, et, 3, w.requires_grad_(True)))
    torch.library.opcheck(op, (x.float(), ei, et, 3, None))
    g = torch.randn(12, 9, dtype=torch.float64)
    torch.library.opcheck(torch.ops.esmgear_fast.relational_aggregate_backward.default,
                          (g, x.detach(), ei, et, 3, w.detach(), True, True))


def test_torch_compile_fullgraph():
    x, ei, et, w = random_graph(4, dtype=torch.float32)
    x.requires_grad_(True)
    f = torch.compile(lambda x, w: relational_aggregate(x, ei, et, 7, w, backend="extension").square().sum(),
                      fullgraph=True)
    loss = f(x, w)
    loss.backward()
    x_ref = x.detach().clone().requires_grad_(True)
    ref = ef.reference.relational_aggregate(x_ref, ei, et, 7, w).square().sum()
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(x.grad, x_ref.grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_edges_and_isolated_nodes(backend):
    x = torch.randn(5, 4, requires_grad=True)
    empty = relational_aggregate(x, torch.empty(2, 0, dtype=torch.long), torch.empty(0, dtype=torch.long), 3,
                                 backend=backend)
    assert empty.shape == (5, 12) and not empty.any()
    empty.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    ei = torch.tensor([[0, 1], [1, 1]])
    out = relational_aggregate(x, ei, torch.tensor([0, 2]), 3, backend=backend)
    assert not out[[0, 2, 3, 4]].any()
    torch.testing.assert_close(out[1], torch.cat([x[0], torch.zeros(4), x[1]]))
    none = relational_aggregate(x[:0], torch.empty(2, 0, dtype=torch.long), torch.empty(0, dtype=torch.long), 3,
                                backend=backend)
    assert none.shape == (0, 12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_input_errors(backend):
    x = torch.randn(4, 3)
    ei = torch.tensor([[0, 1], [2, 3]])
    et = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="outside|out of range"):
        relational_aggregate(x, torch.tensor([[0, 4], [2, 3]]), et, 2, backend=backend)
    with pytest.raises(ValueError, match="outside"):
        relational_aggregate(x, ei, torch.tensor([0, 2]), 2, backend=backend)
    with pytest.raises(ValueError, match="outside"):
        relational_aggregate(x, ei, torch.tensor([-1, 0]), 2, backend=backend)
    with pytest.raises(ValueError, match="edge_type must have shape"):
        relational_aggregate(x, ei, torch.tensor([0]), 2, backend=backend)
    with pytest.raises(ValueError, match=r"\[2, E\]"):
        relational_aggregate(x, torch.zeros(3, 2, dtype=torch.long), et, 2, backend=backend)
    with pytest.raises(ValueError, match="edge_weight must have shape"):
        relational_aggregate(x, ei, et, 2, torch.ones(3), backend=backend)
    with pytest.raises(TypeError, match="int64"):
        relational_aggregate(x, ei.float(), et, 2, backend=backend)
    with pytest.raises(TypeError, match="torch.int64"):
        relational_aggregate(x.long(), ei, et, 2, backend=backend)
    with pytest.raises(ValueError, match="num_relation"):
        relational_aggregate(x, ei, et, 0, backend=backend)


def test_direct_op_call_errors():
    x = torch.randn(4, 3)
    op = torch.ops.esmgear_fast.relational_aggregate
    with pytest.raises(ValueError, match="out of range"):
        op(x, torch.tensor([[0, 9], [1, 1]]), torch.tensor([0, 0]), 2, None)
    with pytest.raises(ValueError, match="edge_type 5"):
        op(x, torch.tensor([[0, 1], [1, 1]]), torch.tensor([0, 5]), 2, None)
    with pytest.raises(TypeError, match="dtype"):
        op(x, torch.tensor([[0, 1], [1, 1]]), torch.tensor([0, 1]), 2, torch.ones(2, dtype=torch.float64))


def test_int32_indices_and_weight_dtype_cast():
    x, ei, et, w = random_graph(6, dtype=torch.float32)
    a = relational_aggregate(x, ei.int(), et.int(), 7, w.double(), backend="extension")
    b = ef.reference.relational_aggregate(x, ei, et, 7, w)
    torch.testing.assert_close(a, b)


def test_triton_backend_unavailable(monkeypatch):
    """Without a GPU, Triton exists only under TRITON_INTERPRET=1 (Triton parity: test_relational_csr.py)."""
    if torch.cuda.is_available():
        pytest.skip("with a GPU the Triton backend is available")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, ei, et, _ = random_graph(7, dtype=torch.float32)
    with pytest.raises(BackendUnavailableError):
        relational_aggregate(x, ei, et, 7, backend="triton")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run .ci/gpu_check.sh on a lent GPU)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_reference(dtype, real_graph):
    """The CUDA kernel (forward and backward) against the float64 reference on a real GearNet graph."""
    x, edge_index, edge_type = real_graph
    w = torch.rand(edge_index.size(1), generator=torch.Generator().manual_seed(4)) + 0.5
    x64, w64 = x.double().requires_grad_(True), w.double().requires_grad_(True)
    expected = ef.reference.relational_aggregate(x64, edge_index, edge_type, 7, w64)
    grad = torch.randn_like(expected)
    expected.backward(grad)
    xc = x.to("cuda", dtype).requires_grad_(True)
    wc = w.to("cuda", dtype).requires_grad_(True)
    out = relational_aggregate(xc, edge_index.cuda(), edge_type.cuda(), 7, wc, backend="extension")
    out.backward(grad.to("cuda", dtype))
    tol = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    torch.testing.assert_close(out.double().cpu(), expected.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(xc.grad.double().cpu(), x64.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(wc.grad.double().cpu(), w64.grad, rtol=tol, atol=tol * 10)
