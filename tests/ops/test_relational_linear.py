"""relational_linear (fused aggregate-then-Linear): the reference equals its definition, every
backend (C++ extension, Triton under the interpreter) equals the reference forward and backward
(x, weight, bias, edge weights) on random and real GearNet graphs."""
import pytest
import torch

import esmgear_fast as ef
from esmgear_fast import BackendUnavailableError
from esmgear_fast.data import collate
from esmgear_fast.nn import GearNetGraph
from esmgear_fast.ops import relational_csr, relational_linear
from esmgear_fast.testing import real_proteins

BACKENDS = ["extension", "triton"]


def random_problem(seed, n=30, d=20, r=4, e=150, out_dim=24, dtype=torch.float32, weighted=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype)
    ei = torch.randint(0, n, (2, e), generator=g)
    et = torch.randint(0, r, (e,), generator=g)
    w = (torch.rand(e, generator=g, dtype=torch.float64) + 0.5).to(dtype) if weighted else None
    weight = (torch.randn(out_dim, r * d, generator=g, dtype=torch.float64) / (r * d) ** 0.5).to(dtype)
    bias = torch.randn(out_dim, generator=g, dtype=torch.float64).to(dtype)
    return x, ei, et, w, weight, bias


@pytest.fixture(scope="module")
def small_real_graph():
    b = collate(real_proteins(n=1, max_len=60))
    edge_index, edge_type = GearNetGraph()(b)
    return b, edge_index, edge_type


def test_reference_matches_definition():
    x, ei, et, w, weight, bias = random_problem(0, n=7, d=3, r=2, e=20, out_dim=4, dtype=torch.float64)
    out = ef.reference.relational_linear(x, ei, et, 2, weight, bias, w)
    expected = bias.expand(7, 4).clone()
    for e in range(20):
        j, i, r = int(ei[0, e]), int(ei[1, e]), int(et[e])
        expected[i] += w[e] * (weight[:, r * 3:(r + 1) * 3] @ x[j])
    torch.testing.assert_close(out, expected)


def _check_parity(backend, x, ei, et, r, w, weight, bias, csr=None, tol=1e-5):
    params = [x, weight, bias] + ([w] if w is not None else [])
    ours = [p.clone().requires_grad_(True) for p in params]
    refs = [p.double().requires_grad_(True) for p in params]
    out = relational_linear(ours[0], ei, et, r, ours[1], ours[2], ours[3] if w is not None else None,
                            backend=backend, csr=csr)
    ref = ef.reference.relational_linear(refs[0], ei, et, r, refs[1], refs[2], refs[3] if w is not None else None)
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)
    g = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out.backward(g.to(out.dtype))
    ref.backward(g)
    for a, b in zip(ours, refs):
        torch.testing.assert_close(a.grad.double(), b.grad, atol=tol * 10, rtol=tol)


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
@pytest.mark.parametrize("weighted", [False, True])
def test_parity_random(backend, weighted):
    x, ei, et, w, weight, bias = random_problem(2, weighted=weighted)
    _check_parity(backend, x, ei, et, 4, w, weight, bias)
    _check_parity(backend, x, ei, et, 4, w, weight, bias, csr=relational_csr(ei, et, 30, 4))


@pytest.mark.parametrize("backend", BACKENDS)
def test_parity_small_real_graph(backend, small_real_graph):
    b, ei, et = small_real_graph
    g = torch.Generator().manual_seed(3)
    x = torch.randn(b.num_nodes, 16, generator=g)
    weight = torch.randn(20, 7 * 16, generator=g) / 10
    bias = torch.randn(20, generator=g)
    w = torch.rand(ei.size(1), generator=g) + 0.5
    _check_parity(backend, x, ei, et, 7, w, weight, bias, csr=relational_csr(ei, et, b.num_nodes, 7))


def test_extension_real_batch_gearnet_width():
    """8 real proteins, 64 -> 48 features: several tiles of target rows, both threads."""
    b = collate(real_proteins(n=8))
    ei, et = GearNetGraph()(b)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(b.num_nodes, 64, generator=g)
    weight = torch.randn(48, 7 * 64, generator=g) / 20
    bias = torch.randn(48, generator=g)
    _check_parity("extension", x, ei, et, 7, None, weight, bias, csr=relational_csr(ei, et, b.num_nodes, 7), tol=1e-4)


def test_extension_deterministic():
    b = collate(real_proteins(n=4))
    ei, et = GearNetGraph()(b)
    x = torch.randn(b.num_nodes, 32, requires_grad=True)
    weight = torch.randn(16, 7 * 32, requires_grad=True)
    runs = []
    for _ in range(2):
        out = relational_linear(x, ei, et, 7, weight, backend="extension")
        gx, gw = torch.autograd.grad(out.square().sum(), [x, weight])
        runs.append((out, gx, gw))
    for a, b_ in zip(*runs):
        assert torch.equal(a, b_)


def test_triton_float16(small_real_graph):
    b, ei, et = small_real_graph
    g = torch.Generator().manual_seed(5)
    x = torch.randn(b.num_nodes, 16, generator=g).half()
    weight = (torch.randn(32, 7 * 16, generator=g) / 10).half()
    out = relational_linear(x, ei, et, 7, weight, backend="triton")
    assert out.dtype == torch.float16
    # The aggregate is rounded to float16 before the dot (as the unfused float16 path does) and the
    # dot accumulates in float32: compare with that computation done in float64.
    agg = ef.reference.relational_aggregate(x.double(), ei, et, 7).half().double()
    expected = agg @ weight.double().t()
    torch.testing.assert_close(out.double(), expected, atol=2e-2, rtol=1e-3)
    xr = x.clone().requires_grad_(True)
    wr = weight.clone().requires_grad_(True)
    relational_linear(xr, ei, et, 7, wr, backend="triton").float().sum().backward()
    assert xr.grad.dtype == torch.float16 and wr.grad.dtype == torch.float16
    x64, w64 = x.double().requires_grad_(True), weight.double().requires_grad_(True)
    ef.reference.relational_linear(x64, ei, et, 7, w64).sum().backward()
    torch.testing.assert_close(xr.grad.double(), x64.grad, atol=5e-2, rtol=1e-2)
    torch.testing.assert_close(wr.grad.double(), w64.grad, atol=5e-2, rtol=1e-2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_edges_and_isolated_nodes(backend):
    x = torch.randn(5, 4, requires_grad=True)
    weight = torch.randn(6, 12, requires_grad=True)
    bias = torch.randn(6)
    none_e, none_t = torch.empty(2, 0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    out = relational_linear(x, none_e, none_t, 3, weight, bias, backend=backend)
    torch.testing.assert_close(out, bias.expand(5, 6))
    out.sum().backward()
    assert not x.grad.any() and not weight.grad.any()
    ei, et = torch.tensor([[0, 1], [1, 1]]), torch.tensor([0, 2])
    out = relational_linear(x, ei, et, 3, weight, None, backend=backend)
    assert not out[[0, 2, 3, 4]].any()
    torch.testing.assert_close(out[1], weight[:, :4] @ x[0] + weight[:, 8:] @ x[1])
    assert relational_linear(x[:0], none_e, none_t, 3, weight, backend=backend).shape == (0, 6)


def test_gradcheck_float64_extension():
    x, ei, et, w, weight, bias = random_problem(6, n=8, d=3, r=2, e=30, out_dim=4, dtype=torch.float64)
    csr = relational_csr(ei, et, 8, 2)
    inputs = [t.requires_grad_(True) for t in (x, w, weight, bias)]
    assert torch.autograd.gradcheck(
        lambda x, w, W, b: relational_linear(x, ei, et, 2, W, b, w, backend="extension", csr=csr), inputs)


def test_opcheck_primitives():
    x, ei, et, w, weight, _ = random_problem(7, n=12, d=5, r=3, e=50, out_dim=6, dtype=torch.float64)
    csr = relational_csr(ei, et, 12, 3, w)
    g = torch.randn(12, 6, dtype=torch.float64)
    ops = torch.ops.esmgear_fast
    torch.library.opcheck(ops.relational_linear.default, (x, csr.rowptr, csr.col, csr.weight, 3, weight.t()))
    torch.library.opcheck(ops.relational_linear_grad_weight.default, (x, csr.rowptr, csr.col, csr.weight, 3, g))
    xf, wf = x.float(), csr.weight.float()
    torch.library.opcheck(ops.relational_linear_triton.default, (xf, csr.rowptr, csr.col, wf, 3, weight.float().t()))
    torch.library.opcheck(ops.relational_linear_grad_weight_triton.default,
                          (xf, csr.rowptr, csr.col, None, 3, g.float()))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    x, ei, et, w, weight, bias = random_problem(8)
    csr = relational_csr(ei, et, 30, 4)
    x.requires_grad_(True)
    weight.requires_grad_(True)
    compile_backend = "aot_eager" if backend == "triton" else "inductor"  # no CPU codegen for Triton
    f = torch.compile(lambda x, W: relational_linear(x, ei, et, 4, W, bias, w, backend=backend, csr=csr).square().sum(),
                      fullgraph=True, backend=compile_backend)
    loss = f(x, weight)
    loss.backward()
    x2, w2 = x.detach().clone().requires_grad_(True), weight.detach().clone().requires_grad_(True)
    ref = ef.reference.relational_linear(x2, ei, et, 4, w2, bias, w).square().sum()
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(weight.grad, w2.grad, rtol=1e-5, atol=1e-4)


def test_input_errors():
    x, ei, et, w, weight, bias = random_problem(9)
    with pytest.raises(ValueError, match="weight must have shape"):
        relational_linear(x, ei, et, 4, weight[:, :-1])
    with pytest.raises(TypeError, match="must match x"):
        relational_linear(x, ei, et, 4, weight.double())
    with pytest.raises(ValueError, match="bias"):
        relational_linear(x, ei, et, 4, weight, bias[:-1])
    with pytest.raises(ValueError, match="outside"):
        relational_linear(x, ei, torch.full_like(et, 4), 4, weight, backend="extension")
    with pytest.raises(TypeError, match="float64"):
        relational_linear(x.double(), ei, et, 4, weight.double(), backend="triton")
    with pytest.raises(ValueError, match="csr was built for"):
        relational_linear(x, ei, et, 4, weight, csr=relational_csr(ei, et, 31, 4))
    op = torch.ops.esmgear_fast.relational_linear
    csr = relational_csr(ei, et, 30, 4)
    with pytest.raises(ValueError, match="N \\* R \\+ 1"):
        op(x[:10], csr.rowptr, csr.col, None, 4, weight.t())
    with pytest.raises(ValueError, match="w_t must have shape"):
        op(x, csr.rowptr, csr.col, None, 4, weight)


def test_no_cuda_extension_backend():
    """There is no CUDA kernel of the fused op: asking for it on a GPU raises instead of falling back."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    x, ei, et, _, weight, _ = random_problem(10)
    with pytest.raises(BackendUnavailableError):
        relational_linear(x.cuda(), ei.cuda(), et.cuda(), 4, weight.cuda(), backend="extension")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (lent GPU)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_cuda_matches_reference(dtype):
    b = collate(real_proteins(n=8))
    ei, et = GearNetGraph()(b)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(b.num_nodes, 64, generator=g)
    weight = torch.randn(48, 7 * 64, generator=g) / 20
    x64, w64 = x.double().requires_grad_(True), weight.double().requires_grad_(True)
    ref = ef.reference.relational_linear(x64, ei, et, 7, w64)
    grad = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    ref.backward(grad)
    xc, wc = x.to("cuda", dtype).requires_grad_(True), weight.to("cuda", dtype).requires_grad_(True)
    out = relational_linear(xc, ei.cuda(), et.cuda(), 7, wc, backend="triton")
    out.backward(grad.to("cuda", dtype))
    tol = {torch.float32: 1e-4, torch.float16: 3e-2, torch.bfloat16: 2e-1}[dtype]
    torch.testing.assert_close(out.double().cpu(), ref.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(xc.grad.double().cpu(), x64.grad, rtol=tol, atol=tol * 10)
    torch.testing.assert_close(wc.grad.double().cpu(), w64.grad, rtol=tol, atol=tol * 10)
