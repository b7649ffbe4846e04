"""relational_csr (the per-graph sorted structure) and the CSR paths of relational_aggregate:
the structure against its definition, every backend (extension on CPU, Triton under the
interpreter) equal to the reference forward and backward, on random and real GearNet graphs."""
import pytest
import torch

import esmgear_fast as ef
from esmgear_fast import BackendUnavailableError
from esmgear_fast.data import collate
from esmgear_fast.nn import GearNetGraph
from esmgear_fast.ops import RelationalCSR, relational_aggregate, relational_csr
from esmgear_fast.testing import real_proteins

BACKENDS = ["extension", "triton"]


def random_graph(seed, n=30, d=5, r=4, e=120, dtype=torch.float32, weighted=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype)
    edge_index = torch.randint(0, n, (2, e), generator=g)
    edge_type = torch.randint(0, r, (e,), generator=g)
    w = (torch.rand(e, generator=g, dtype=torch.float64) + 0.5).to(dtype) if weighted else None
    return x, edge_index, edge_type, w


@pytest.fixture(scope="module")
def small_real_graph():
    """One small real chain (Triton runs under the slow interpreter here)."""
    b = collate(real_proteins(n=1, max_len=60))
    edge_index, edge_type = GearNetGraph()(b)
    return b, edge_index, edge_type


@pytest.fixture(scope="module")
def real_graph():
    b = collate(real_proteins(n=8))
    edge_index, edge_type = GearNetGraph()(b)
    return b, edge_index, edge_type


def test_structure_matches_definition():
    x, ei, et, w = random_graph(0, n=9, r=3, e=60)
    csr = relational_csr(ei, et, 9, 3, w)
    src, dst, rel = ei[0].tolist(), ei[1].tolist(), et.tolist()
    # Sorted by (target, relation); ties keep input order (stable).
    expected = sorted(range(60), key=lambda e: (dst[e] * 3 + rel[e], e))
    assert csr.perm.tolist() == expected
    assert csr.col.tolist() == [src[e] for e in expected]
    assert csr.row.tolist() == [dst[e] * 3 + rel[e] for e in expected]
    counts = [0] * 27
    for e in range(60):
        counts[dst[e] * 3 + rel[e]] += 1
    assert csr.rowptr.tolist() == [sum(counts[:k]) for k in range(28)]
    torch.testing.assert_close(csr.weight, w[torch.tensor(expected)])
    # Transposed order: by (source, relation), stable over the sorted order.
    expected_t = sorted(range(60), key=lambda k: (src[expected[k]] * 3 + rel[expected[k]], k))
    assert csr.perm_t.tolist() == expected_t
    assert csr.col_t.tolist() == [dst[expected[k]] for k in expected_t]
    assert csr.row_t.tolist() == [dst[expected[k]] * 3 + rel[expected[k]] for k in expected_t]
    counts_t = [0] * 27
    for e in range(60):
        counts_t[src[e] * 3 + rel[e]] += 1
    assert csr.rowptr_t.tolist() == [sum(counts_t[:k]) for k in range(28)]
    assert csr.srcptr.tolist() == [sum(counts_t[:3 * j]) for j in range(10)]
    assert (csr.num_nodes, csr.num_relation) == (9, 3)


def test_structure_errors():
    ei = torch.tensor([[0, 1], [1, 2]])
    et = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="edge_index has entries outside"):
        relational_csr(ei, et, 2, 2)
    with pytest.raises(ValueError, match="edge_type has entries outside"):
        relational_csr(ei, et, 3, 1)
    with pytest.raises(ValueError, match=r"\[2, E\]"):
        relational_csr(ei[:1], et, 3, 2)
    with pytest.raises(ValueError, match="edge_type must have shape"):
        relational_csr(ei, et[:1], 3, 2)
    with pytest.raises(TypeError, match="int64"):
        relational_csr(ei.float(), et, 3, 2)
    with pytest.raises(ValueError, match="num_relation"):
        relational_csr(ei, et, 3, 0)
    with pytest.raises(ValueError, match="NaN"):
        relational_csr(ei, et, 3, 2, torch.tensor([1.0, float("nan")]))
    x = torch.randn(3, 4)
    csr = relational_csr(ei, et, 3, 2)
    with pytest.raises(ValueError, match="csr was built for"):
        relational_aggregate(torch.randn(4, 4), ei, et, 2, csr=csr)
    with pytest.raises(TypeError, match="RelationalCSR"):
        relational_aggregate(x, ei, et, 2, csr=(1, 2))
    with pytest.raises(ValueError, match="both"):
        relational_aggregate(x, ei, et, 2, torch.ones(2), csr=relational_csr(ei, et, 3, 2, torch.ones(2)),
                             backend="extension")


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("weight_in_csr", [False, True])
def test_parity_random(backend, weighted, weight_in_csr):
    x, ei, et, w = random_graph(1, weighted=weighted)
    x1 = x.clone().requires_grad_(True)
    w1 = None if w is None else w.clone().requires_grad_(True)
    if weight_in_csr:
        csr = relational_csr(ei, et, 30, 4, w1)
        out = relational_aggregate(x1, ei, et, 4, backend=backend, csr=csr)
    else:
        out = relational_aggregate(x1, ei, et, 4, w1, backend=backend, csr=relational_csr(ei, et, 30, 4))
    x2 = x.double().requires_grad_(True)
    w2 = None if w is None else w.double().requires_grad_(True)
    ref = ef.reference.relational_aggregate(x2, ei, et, 4, w2)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out.backward(g.float())
    ref.backward(g)
    torch.testing.assert_close(x1.grad.double(), x2.grad, atol=1e-5, rtol=1e-5)
    if w is not None:
        torch.testing.assert_close(w1.grad.double(), w2.grad, atol=1e-5, rtol=1e-5)


def test_triton_without_csr_builds_one():
    x, ei, et, w = random_graph(3)
    out = relational_aggregate(x, ei, et, 4, w, backend="triton")
    torch.testing.assert_close(out, ef.reference.relational_aggregate(x, ei, et, 4, w), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_parity_small_real_graph(backend, small_real_graph):
    b, ei, et = small_real_graph
    x = torch.randn(b.num_nodes, 8, generator=torch.Generator().manual_seed(4))
    w = torch.rand(ei.size(1), generator=torch.Generator().manual_seed(5)) + 0.5
    csr = relational_csr(ei, et, b.num_nodes, 7)
    x1, w1 = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    x2, w2 = x.double().requires_grad_(True), w.double().requires_grad_(True)
    out = relational_aggregate(x1, ei, et, 7, w1, backend=backend, csr=csr)
    ref = ef.reference.relational_aggregate(x2, ei, et, 7, w2)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    g = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    out.backward(g.float())
    ref.backward(g)
    torch.testing.assert_close(x1.grad.double(), x2.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w1.grad.double(), w2.grad, atol=1e-4, rtol=1e-5)


def test_extension_csr_parity_real_batch(real_graph):
    b, ei, et = real_graph
    x = torch.randn(b.num_nodes, 32, generator=torch.Generator().manual_seed(7))
    csr = relational_csr(ei, et, b.num_nodes, 7)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out = relational_aggregate(x1, ei, et, 7, backend="extension", csr=csr)
    ref = relational_aggregate(x2, ei, et, 7, backend="extension")  # the bucketing kernel, no CSR
    # Both sum each (target, relation) row in input edge order: bit-identical.
    assert torch.equal(out, ref)
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-5, rtol=1e-5)


def test_triton_float16(small_real_graph):
    """Under the interpreter float16 works: float32 accumulation, one rounding at the end."""
    b, ei, et = small_real_graph
    x = torch.randn(b.num_nodes, 8, generator=torch.Generator().manual_seed(8)).half().requires_grad_(True)
    csr = relational_csr(ei, et, b.num_nodes, 7)
    out = relational_aggregate(x, ei, et, 7, backend="triton", csr=csr)
    assert out.dtype == torch.float16
    exact = ef.reference.relational_aggregate(x.detach().double(), ei, et, 7)
    torch.testing.assert_close(out.double(), exact.half().double(), atol=0, rtol=0)
    out.float().sum().backward()
    # The gradient of the sum w.r.t. x[j, :] is the out-degree of j (all weights 1).
    assert x.grad.dtype == torch.float16
    torch.testing.assert_close(x.grad.double(), torch.bincount(ei[0], minlength=b.num_nodes).double().unsqueeze(-1)
                               .expand(-1, 8), atol=0, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_edges_and_isolated_nodes(backend):
    x = torch.randn(5, 4, requires_grad=True)
    none_e = torch.empty(2, 0, dtype=torch.long)
    none_t = torch.empty(0, dtype=torch.long)
    empty = relational_aggregate(x, none_e, none_t, 3, backend=backend, csr=relational_csr(none_e, none_t, 5, 3))
    assert empty.shape == (5, 12) and not empty.any()
    empty.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    ei = torch.tensor([[0, 1], [1, 1]])
    et = torch.tensor([0, 2])
    out = relational_aggregate(x, ei, et, 3, backend=backend, csr=relational_csr(ei, et, 5, 3))
    assert not out[[0, 2, 3, 4]].any()
    torch.testing.assert_close(out[1], torch.cat([x[0], torch.zeros(4), x[1]]))
    nothing = relational_aggregate(x[:0], none_e, none_t, 3, backend=backend, csr=relational_csr(none_e, none_t, 0, 3))
    assert nothing.shape == (0, 12)


def test_gradcheck_float64_extension():
    x, ei, et, w = random_graph(9, n=10, d=3, r=3, e=40, dtype=torch.float64)
    csr = relational_csr(ei, et, 10, 3)
    x.requires_grad_(True)
    w.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x, w: relational_aggregate(x, ei, et, 3, w, backend="extension", csr=csr), (x, w))


def test_opcheck_primitives():
    x, ei, et, w = random_graph(10, n=12, d=3, r=3, e=40, dtype=torch.float64)
    csr = relational_csr(ei, et, 12, 3, w)
    ops = torch.ops.esmgear_fast
    torch.library.opcheck(ops.relational_csr_spmm.default, (x, csr.rowptr, csr.col, csr.weight))
    torch.library.opcheck(ops.relational_csr_spmm.default, (x.float(), csr.rowptr, csr.col, None))
    g = torch.randn(36, 3, dtype=torch.float64)
    torch.library.opcheck(ops.relational_csr_sddmm.default, (g, x, csr.row, csr.col))
    xf, wf = x.float(), csr.weight.float()
    torch.library.opcheck(ops.relational_csr_spmm_triton.default, (xf, csr.rowptr, csr.col, wf))
    torch.library.opcheck(ops.relational_csr_sddmm_triton.default, (g.float(), xf, csr.row, csr.col))


def test_primitive_input_errors():
    x = torch.randn(4, 3)
    op = torch.ops.esmgear_fast.relational_csr_spmm
    with pytest.raises(ValueError, match="outside"):
        op(x, torch.tensor([0, 1, 2]), torch.tensor([0, 9]), None)
    with pytest.raises(ValueError, match="start at 0 and end at nnz"):
        op(x, torch.tensor([0, 1, 3]), torch.tensor([0, 1]), None)
    with pytest.raises(ValueError, match="decreases"):
        op(x, torch.tensor([0, 2, 1, 2]), torch.tensor([0, 1]), None)
    with pytest.raises(TypeError, match="dtype"):
        op(x, torch.tensor([0, 1, 2]), torch.tensor([0, 1]), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="outside"):
        torch.ops.esmgear_fast.relational_csr_sddmm(x, x, torch.tensor([0, 4]), torch.tensor([0, 1]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    x, ei, et, w = random_graph(11)
    csr = relational_csr(ei, et, 30, 4)
    x.requires_grad_(True)
    compile_backend = "aot_eager" if backend == "triton" else "inductor"  # no CPU codegen for Triton
    f = torch.compile(lambda x, w: relational_aggregate(x, ei, et, 4, w, backend=backend, csr=csr).square().sum(),
                      fullgraph=True, backend=compile_backend)
    loss = f(x, w)
    loss.backward()
    x_ref = x.detach().clone().requires_grad_(True)
    ref = ef.reference.relational_aggregate(x_ref, ei, et, 4, w).square().sum()
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_triton_unavailable_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, ei, et, _ = random_graph(12)
    if torch.cuda.is_available():
        pytest.skip("with a GPU the Triton backend is available for CUDA tensors")
    with pytest.raises(BackendUnavailableError):
        relational_aggregate(x, ei, et, 4, backend="triton")


def test_triton_float64_rejected():
    x, ei, et, _ = random_graph(13, dtype=torch.float64)
    with pytest.raises(TypeError, match="float64"):
        relational_aggregate(x, ei, et, 4, backend="triton")


def test_structure_is_a_namedtuple_of_tensors():
    _, ei, et, _ = random_graph(14)
    csr = relational_csr(ei, et, 30, 4)
    assert isinstance(csr, RelationalCSR)
    assert all(isinstance(getattr(csr, f), torch.Tensor) for f in RelationalCSR._fields
               if f not in ("weight", "num_nodes", "num_relation"))
