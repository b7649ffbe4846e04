"""radius_graph / knn_graph: every backend equals the reference, and the reference equals the
definition (checked by brute force in plain Python on small inputs)."""
import math
import os
import subprocess
import sys

import pytest
import torch

import esmgear_fast as ef
from esmgear_fast import BackendUnavailableError
from esmgear_fast.ops import knn_graph, radius_graph

COMPILED = ["extension"] + (["extension_cuda"] if torch.cuda.is_available() else [])


def run(op, backend, pos, *args, **kwargs):
    if backend == "extension_cuda":
        batch = kwargs.pop("batch", None)
        out = op(pos.cuda(), *args, batch=None if batch is None else batch.cuda(), backend="extension", **kwargs)
        return out.cpu()
    return op(pos, *args, backend=backend, **kwargs)


def random_batch(seed, sizes, scale=8.0, dtype=torch.float32, integer=False):
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    pos = torch.randn(n, 3, generator=g, dtype=torch.float64) * scale
    if integer:  # many exact distance ties and duplicate points
        pos = torch.randint(-3, 4, (n, 3), generator=g).double()
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return pos.to(dtype), batch


def brute_force(pos, batch, allowed_pair, cap, loop):
    """The definition in plain Python: per target, the `cap` smallest (d2, j) among allowed pairs."""
    p = pos.tolist()
    b = batch.tolist()
    edges = []
    for i in range(len(p)):
        cand = []
        for j in range(len(p)):
            if b[j] != b[i] or (j == i and not loop):
                continue
            d = [torch.tensor(p[j][a], dtype=pos.dtype) - torch.tensor(p[i][a], dtype=pos.dtype) for a in range(3)]
            d2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
            if allowed_pair(d2):
                cand.append((d2.item(), j))
        cand.sort()
        if cap is not None:
            cand = cand[:cap]
        edges += [(j, i) for _, j in sorted(cand, key=lambda c: c[1])]
    return torch.tensor(edges, dtype=torch.long).reshape(-1, 2).t()


# ---------------------------------------------------------------- the reference is the definition


@pytest.mark.parametrize("integer", [False, True])
@pytest.mark.parametrize("loop", [False, True])
@pytest.mark.parametrize("cap", [None, 0, 1, 5])
def test_reference_radius_matches_definition(integer, loop, cap):
    pos, batch = random_batch(1, [17, 1, 23], scale=3.0, integer=integer)
    r = 2.5
    r2 = torch.tensor(r * r, dtype=pos.dtype)
    expected = brute_force(pos, batch, lambda d2: bool(d2 < r2), cap, loop)
    assert torch.equal(ef.reference.radius_graph(pos, r, batch, cap, loop), expected)


@pytest.mark.parametrize("integer", [False, True])
@pytest.mark.parametrize("loop", [False, True])
@pytest.mark.parametrize("k", [0, 1, 4, 30])
def test_reference_knn_matches_definition(integer, loop, k):
    pos, batch = random_batch(2, [17, 1, 23], scale=3.0, integer=integer)
    expected = brute_force(pos, batch, lambda d2: True, k, loop)
    assert torch.equal(ef.reference.knn_graph(pos, k, batch, loop), expected)


def test_hand_made_line():
    # Points on a line at x = 0, 1, 2, 4: distances are exact in float32.
    pos = torch.tensor([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [4, 0, 0]])
    # r = 2 is strict: 0-2 (distance 2) and 2-4 are excluded.
    expected = {(1, 0), (0, 1), (2, 1), (1, 2)}
    for backend in ["reference"] + COMPILED:
        ei = run(radius_graph, backend, pos, 2.0)
        assert set(map(tuple, ei.t().tolist())) == expected
        # Cap 1: node 1 has two neighbours at distance 1 -> the lower index (0) wins.
        ei = run(radius_graph, backend, pos, 2.0, max_num_neighbors=1)
        assert set(map(tuple, ei.t().tolist())) == {(1, 0), (0, 1), (1, 2)}
        # kNN k=1: node 3's nearest is node 2 (distance 2).
        ei = run(knn_graph, backend, pos, 1)
        assert set(map(tuple, ei.t().tolist())) == {(1, 0), (0, 1), (1, 2), (2, 3)}


# ------------------------------------------------------------------- compiled == reference, random


CASES = [
    dict(seed=0, sizes=[200], scale=8.0),
    dict(seed=1, sizes=[50, 1, 120, 7, 300], scale=10.0),
    dict(seed=2, sizes=[64, 64], scale=3.0, integer=True),  # ties and duplicates
    dict(seed=3, sizes=[1]),
    dict(seed=4, sizes=[2, 1, 1, 3]),
    dict(seed=5, sizes=[400], scale=40.0),  # sparse
    dict(seed=6, sizes=[150, 80], scale=8.0, dtype=torch.float64),
]


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("loop", [False, True])
def test_radius_graph_equals_reference(backend, case, loop):
    pos, batch = random_batch(**CASES[case])
    for r in [0.0, 1.5, 6.0, 10.0, math.inf]:
        for cap in [None, 0, 1, 32]:
            expected = ef.reference.radius_graph(pos, r, batch, cap, loop)
            got = run(radius_graph, backend, pos, r, batch=batch, max_num_neighbors=cap, loop=loop)
            assert torch.equal(got, expected), (r, cap)


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("loop", [False, True])
def test_knn_graph_equals_reference(backend, case, loop):
    pos, batch = random_batch(**CASES[case])
    for k in [0, 1, 10, 64, 500]:
        expected = ef.reference.knn_graph(pos, k, batch, loop)
        got = run(knn_graph, backend, pos, k, batch=batch, loop=loop)
        assert torch.equal(got, expected), k


@pytest.mark.parametrize("backend", COMPILED)
def test_batch_none_and_gaps_in_batch(backend):
    pos, _ = random_batch(7, [90])
    for op, arg in [(radius_graph, 6.0), (knn_graph, 5)]:
        assert torch.equal(run(op, backend, pos, arg), op(pos, arg, backend="reference"))
        # Protein indices 0, 2, 5 (proteins 1, 3, 4 empty).
        batch = torch.tensor([0] * 30 + [2] * 40 + [5] * 20)
        got = run(op, backend, pos, arg, batch=batch)
        assert torch.equal(got, op(pos, arg, batch=batch, backend="reference"))
        assert torch.equal(batch[got[0]], batch[got[1]])  # never crosses proteins


@pytest.mark.parametrize("backend", ["reference"] + COMPILED)
def test_empty_input(backend):
    pos = torch.zeros(0, 3)
    for batch in [None, torch.zeros(0, dtype=torch.long)]:
        assert run(radius_graph, backend, pos, 5.0, batch=batch).shape == (2, 0)
        assert run(knn_graph, backend, pos, 5, batch=batch).shape == (2, 0)


@pytest.mark.parametrize("backend", COMPILED)
def test_outliers_and_large_coordinates(backend):
    # A point 1e6 A away must not blow up the cell grid; large offsets keep exact parity.
    pos, batch = random_batch(8, [100, 100])
    pos[5] = torch.tensor([1e6, -1e6, 1e6])
    pos[150:] += 5000.0
    for op, arg in [(radius_graph, 8.0), (knn_graph, 10)]:
        assert torch.equal(run(op, backend, pos, arg, batch=batch), op(pos, arg, batch=batch, backend="reference"))


def test_half_precision_is_upcast():
    pos, batch = random_batch(9, [120])
    half = pos.half()
    expected = radius_graph(half.float(), 6.0, batch)
    assert torch.equal(radius_graph(half, 6.0, batch), expected)
    assert torch.equal(knn_graph(half.bfloat16(), 7, batch), knn_graph(half.bfloat16().float(), 7, batch))


# ----------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("backend", ["reference"] + COMPILED)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_positions_raise(backend, bad):
    pos, batch = random_batch(10, [30])
    pos[17, 1] = bad
    for op, arg in [(radius_graph, 5.0), (knn_graph, 3)]:
        with pytest.raises(ValueError, match="non-finite.*row 17"):
            run(op, backend, pos, arg, batch=batch)


@pytest.mark.parametrize("backend", ["reference"] + COMPILED)
def test_bad_arguments_raise(backend):
    pos, batch = random_batch(11, [10, 10])
    with pytest.raises(ValueError, match="sorted"):
        run(radius_graph, backend, pos, 5.0, batch=batch.flip(0))
    with pytest.raises(ValueError, match="shape"):
        run(radius_graph, backend, pos, 5.0, batch=batch[:5])
    with pytest.raises(ValueError, match="negative"):
        run(radius_graph, backend, pos, 5.0, batch=batch - 1)
    with pytest.raises(ValueError, match="r must be"):
        run(radius_graph, backend, pos, -1.0, batch=batch)
    with pytest.raises(ValueError, match="max_num_neighbors"):
        run(radius_graph, backend, pos, 1.0, batch=batch, max_num_neighbors=-2)
    with pytest.raises(ValueError, match="k must be"):
        run(knn_graph, backend, pos, -1, batch=batch)
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        run(knn_graph, backend, pos[:, :2], 3)
    with pytest.raises(TypeError, match="floating"):
        run(knn_graph, backend, pos.long(), 3)


def test_backend_selection_errors_and_context(monkeypatch):
    pos, batch = random_batch(12, [40])
    with pytest.raises(BackendUnavailableError, match="no 'triton' backend"):
        radius_graph(pos, 5.0, batch, backend="triton")
    with pytest.raises(ValueError, match="unknown backend"):
        radius_graph(pos, 5.0, batch, backend="fastest")
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailableError):
            ef.backend.resolve("radius_graph", "extension", torch.device("cuda"), ("extension", "reference"))
    calls = []
    monkeypatch.setattr(ef.reference, "radius_graph", lambda *a: calls.append(a) or torch.zeros(2, 0, dtype=torch.long))
    with ef.use_backend("reference"):
        assert ef.get_backend() == "reference"
        radius_graph(pos, 5.0, batch)
        radius_graph(pos, 5.0, batch, backend="extension")  # per-call choice wins
    assert len(calls) == 1
    assert ef.get_backend() == "auto"


def test_backend_environment_variable():
    code = "import esmgear_fast as ef; print(ef.get_backend())"
    env = dict(os.environ, ESMGEAR_FAST_BACKEND="reference")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "reference"
    env["ESMGEAR_FAST_BACKEND"] = "nonsense"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "unknown backend" in out.stderr


# ------------------------------------------------------------------------ torch.library plumbing


def test_opcheck():
    pos, batch = random_batch(13, [60, 40])
    for args in [(pos, batch, 6.0, 32, False), (pos, None, 6.0, None, True), (pos.double(), batch, 4.0, 3, False)]:
        torch.library.opcheck(torch.ops.esmgear_fast.radius_graph.default, args)
    for args in [(pos, batch, 10, False), (pos, None, 3, True), (pos.requires_grad_(), batch, 5, False)]:
        torch.library.opcheck(torch.ops.esmgear_fast.knn_graph.default, args)


def test_torch_compile_fullgraph():
    def both(pos, batch):
        return torch.cat([radius_graph(pos, 6.0, batch), knn_graph(pos, 10, batch)], dim=1)

    compiled = torch.compile(both, fullgraph=True, dynamic=True)
    for seed, sizes in [(14, [80, 20]), (15, [150])]:
        pos, batch = random_batch(seed, sizes)
        assert torch.equal(compiled(pos, batch), both(pos, batch))


@pytest.mark.parametrize("backend", ["reference"] + COMPILED)
def test_overflowing_distances(backend):
    # Finite float32 coordinates whose squared distances overflow to +inf: every pair is then
    # "infinitely" far, ties are broken by index, and the self pair must not take a slot.
    pos = torch.tensor([[0.0, 0, 0], [3e38, 0, 0], [-3e38, 0, 0], [0, 3e38, 0], [0, 0, -3e38]])
    expected = brute_force(pos, torch.zeros(5, dtype=torch.long), lambda d2: True, 2, False)
    assert torch.equal(run(knn_graph, backend, pos, 2), expected)
    assert torch.equal(run(radius_graph, backend, pos, math.inf, max_num_neighbors=2), torch.zeros(2, 0, dtype=torch.long))


# ------------------------------------------------------------- fused radius + kNN (GearNet's pair)


@pytest.mark.parametrize("backend", ["reference"] + COMPILED)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_radius_knn_graph_equals_separate_ops(backend, case):
    pos, batch = random_batch(**CASES[case])
    for r, cap, k, loop in [(10.0, 32, 10, False), (6.0, None, 10, False), (3.0, 4, 30, True), (0.0, 0, 0, False),
                            (math.inf, 5, 3, False)]:
        expected = (ef.reference.radius_graph(pos, r, batch, cap, loop), ef.reference.knn_graph(pos, k, batch, loop))
        got = run(ef.ops.radius_knn_graph, backend, pos, r, k, batch=batch, max_num_neighbors=cap, loop=loop)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1]), (r, cap, k, loop)


def test_radius_knn_graph_plumbing():
    pos, batch = random_batch(16, [60, 40])
    torch.library.opcheck(torch.ops.esmgear_fast.radius_knn_graph.default, (pos, batch, 8.0, 32, 10, False))
    torch.library.opcheck(torch.ops.esmgear_fast.radius_knn_graph.default, (pos.double(), None, 4.0, None, 3, True))
    compiled = torch.compile(lambda p, b: ef.ops.radius_knn_graph(p, 8.0, 10, b), fullgraph=True)
    got, expected = compiled(pos, batch), ef.ops.radius_knn_graph(pos, 8.0, 10, batch)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    with pytest.raises(ValueError, match="non-finite"):
        ef.ops.radius_knn_graph(torch.full((3, 3), float("nan")), 8.0, 10)


# ------------------------------------------------------------------------ real protein structures


@pytest.fixture(scope="module")
def real_chain_batches():
    from esmgear_fast.data import collate
    from esmgear_fast.testing import real_proteins

    proteins = real_proteins()
    assert len(proteins) >= 200, "the real-structure fixture should hold >= 200 chains"
    return [collate(proteins[i:i + 40]) for i in range(0, len(proteins), 40)]


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("cap", [None, 32, 8])
def test_real_chains_identical_to_reference(backend, cap, real_chain_batches):
    """Every real chain of the fixture (>= 200), in batches: radius 10 A with and without the cap,
    kNN 10, and the fused pair, identical to the reference."""
    for b in real_chain_batches:
        expected_radius = ef.reference.radius_graph(b.pos, 10.0, b.batch, cap)
        expected_knn = ef.reference.knn_graph(b.pos, 10, b.batch)
        assert torch.equal(run(radius_graph, backend, b.pos, 10.0, batch=b.batch, max_num_neighbors=cap), expected_radius)
        assert torch.equal(run(knn_graph, backend, b.pos, 10, batch=b.batch), expected_knn)
        fused = run(ef.ops.radius_knn_graph, backend, b.pos, 10.0, 10, batch=b.batch, max_num_neighbors=cap)
        assert torch.equal(fused[0], expected_radius) and torch.equal(fused[1], expected_knn)


@pytest.mark.parametrize("backend", COMPILED)
def test_real_complexes_identical_to_reference(backend):
    """Multi-chain assemblies of 1,000-3,000 residues (one protein each)."""
    from esmgear_fast.testing import real_complexes

    complexes = real_complexes(max_len=3000)
    assert complexes
    for protein in complexes:
        for op, args in [(radius_graph, (10.0,)), (knn_graph, (10,))]:
            assert torch.equal(run(op, backend, protein.pos, *args), op(protein.pos, *args, backend="reference"))
