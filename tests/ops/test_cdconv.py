"""cdconv: the reference equals a plain-Python transcription of the CDConv definition, and every fused
backend (C++ "extension" on CPU, "triton" under TRITON_INTERPRET) equals the reference forward and
backward on random graphs, real protein graphs and edge cases."""
import math
import os

import pytest
import torch

import esmgear_fast as ef
from esmgear_fast import BackendUnavailableError
from esmgear_fast.models.cdconv import residue_frames
from esmgear_fast.ops import cdconv
from esmgear_fast.ops.cdconv import kernel_weights, sort_edges_by_target, weightnet_dense
from esmgear_fast.reference.cdconv import weightnet as reference_weightnet
from esmgear_fast.testing import real_proteins

FUSED = ["extension", "triton"]
TRITON_OK = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
# Tolerances: fused backends reorder float32 sums (and half precision rounds the output once).
TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-4, atol=1e-5),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}


def needs(backend):
    if backend == "triton" and not TRITON_OK:
        pytest.skip("triton needs a GPU or TRITON_INTERPRET=1")  # pragma: no cover


def params(seed, kernel_dims=(16, 32), l=5, channels=6, out=5, dtype=torch.float64, with_weight=True):
    g = torch.Generator().manual_seed(seed)
    weights, biases, fan_in = [], [], 7
    for k in kernel_dims:
        weights.append((torch.randn(l, fan_in, k, generator=g, dtype=torch.float64) / math.sqrt(fan_in)).to(dtype))
        # non-zero biases so LeakyReLU's negative branch and the bias path are both exercised
        biases.append((0.3 * torch.randn(l, k, generator=g, dtype=torch.float64)).to(dtype))
        fan_in = k
    w = None
    if with_weight:
        w = (torch.randn(kernel_dims[-1] * channels, out, generator=g, dtype=torch.float64) / 8).to(dtype)
    return weights, biases, w


def random_structure(seed, n=12, channels=6, dtype=torch.float64, gaps=True):
    g = torch.Generator().manual_seed(seed)
    pos = torch.cumsum(torch.randn(n, 3, generator=g, dtype=torch.float64) * 2.2, 0)
    frame = torch.linalg.qr(torch.randn(n, 3, 3, generator=g, dtype=torch.float64))[0].transpose(1, 2)
    steps = torch.randint(1, 4 if gaps else 2, (n,), generator=g)
    seq = torch.cumsum(steps, 0) + 40
    x = torch.randn(n, channels, generator=g, dtype=torch.float64).to(dtype)
    return x, pos, frame, seq


def radius_edges(pos, r, batch=None):
    """All pairs within r (self loops included), source row 0, target row 1."""
    d = torch.cdist(pos, pos)
    adj = d <= r
    if batch is not None:
        adj &= batch[:, None] == batch[None, :]
    target, source = adj.nonzero().t()
    return torch.stack([source, target])


def definition(x, pos, frame, seq, edge_index, weights, biases, weight, r, l):
    """CDConv written out edge by edge with Python floats (independent of the code under test)."""
    n, c = x.shape
    half = l // 2
    kdim = weights[-1].shape[2]
    agg = [[0.0] * (kdim * c) for _ in range(n)]
    for j, i in edge_index.t().tolist():
        delta = [float(pos[j, a] - pos[i, a]) for a in range(3)]
        d = math.sqrt(sum(v * v for v in delta))
        unit = [v / (d + 1e-9) for v in delta]
        feat = [sum(float(frame[i, a, b]) * unit[b] for b in range(3)) for a in range(3)]
        feat += [sum(float(frame[i, a, b]) * float(frame[j, a, b]) for b in range(3)) for a in range(3)]
        feat += [d]
        off = max(-half, min(half, int(seq[j]) - int(seq[i])))
        h = feat
        for w_l, b_l in zip(weights, biases):
            w_o, b_o = w_l[off + half], b_l[off + half]
            z = [float(b_o[q]) + sum(h[p] * float(w_o[p, q]) for p in range(len(h))) for q in range(w_o.shape[1])]
            h = [v if v >= 0 else 0.2 * v for v in z]
        smooth = 0.5 - 0.5 * math.tanh(16.0 * (d / r) * (abs(off) / half) - 14.0)
        for k in range(kdim):
            for ch in range(c):
                agg[i][k * c + ch] += h[k] * smooth * float(x[j, ch])
    agg = torch.tensor(agg, dtype=torch.float64)
    return agg if weight is None else agg @ weight.double()


@pytest.fixture(scope="module")
def real_chain():
    protein = real_proteins(1, 40, 60)[0]
    pos = protein.pos.double()
    return pos, residue_frames(pos), protein.residue_number.long()


# --------------------------------------------------------------------------- reference = definition


@pytest.mark.parametrize("with_weight", [True, False])
def test_reference_matches_definition(with_weight):
    x, pos, frame, seq = random_structure(0, n=9, channels=3)
    weights, biases, w = params(1, kernel_dims=(4, 5), l=5, channels=3, with_weight=with_weight)
    r = 6.0
    ei = radius_edges(pos, r)
    assert ei.size(1) > 9  # more than the self loops
    out = ef.reference.cdconv(x, pos, frame, seq, ei, weights, biases, w, r, 5)
    torch.testing.assert_close(out, definition(x, pos, frame, seq, ei, weights, biases, w, r, 5))


def test_reference_matches_definition_real_chain(real_chain):
    pos, frame, seq = real_chain
    pos, frame, seq = pos[:14], frame[:14], seq[:14]
    x = torch.randn(14, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    weights, biases, w = params(3, kernel_dims=(6,), l=3, channels=3)
    ei = radius_edges(pos, 8.0)
    out = ef.reference.cdconv(x, pos, frame, seq, ei, weights, biases, w, 8.0, 3)
    torch.testing.assert_close(out, definition(x, pos, frame, seq, ei, weights, biases, w, 8.0, 3))


def test_smooth_factor_kills_far_sequence_neighbours():
    # |offset| = l//2 and d close to r: tanh(16 * ~1 * 1 - 14) ~ 1, the message nearly vanishes, while the
    # self loop (offset 0) has smooth 0.5 - 0.5 tanh(-14) ~ 1.
    pos = torch.tensor([[0.0, 0.0, 0.0], [9.9, 0.0, 0.0]], dtype=torch.float64)
    frame = torch.eye(3, dtype=torch.float64).expand(2, 3, 3)
    seq = torch.tensor([1, 50])
    kw = ef.reference.cdconv_kernel_weights(
        pos, frame, seq, torch.tensor([[1, 0], [0, 0]]), [torch.ones(3, 7, 1, dtype=torch.float64)],
        [torch.ones(3, 1, dtype=torch.float64)], 10.0, 3, torch.float64,
    )
    # far edge: features u=(1,0,0), agreement (1,1,1), d=9.9; all-ones weights + bias 1 -> 14.9 before smoothing
    assert kw[0, 0].item() == pytest.approx((1 + 3 + 9.9 + 1) * (0.5 - 0.5 * math.tanh(16 * 0.99 - 14)))
    assert kw[0, 0].item() < 0.5
    # self loop: u=0, agreement (1,1,1), d=0 -> 3 + 1
    assert kw[1, 0].item() == pytest.approx((3 + 1) * (0.5 - 0.5 * math.tanh(-14.0)))


# --------------------------------------------------------------------------- fused backends = reference


def run_with_grads(backend, x, pos, frame, seq, ei, weights, biases, w, r, l, grad_seed=5, pos_grad=False):
    x = x.detach().clone().requires_grad_(True)
    weights = [t.detach().clone().requires_grad_(True) for t in weights]
    biases = [t.detach().clone().requires_grad_(True) for t in biases]
    w = w.detach().clone().requires_grad_(True) if w is not None else None
    pos = pos.detach().clone().requires_grad_(pos_grad)
    out = cdconv(x, pos, frame, seq, ei, weights, biases, w, r, l, backend=backend)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64).to(out.dtype)
    inputs = [x, *weights, *biases] + ([w] if w is not None else []) + ([pos] if pos_grad else [])
    grads = torch.autograd.grad(out, inputs, g)
    return out, grads


def assert_parity(backend, dtype, *args, pos_grad=False):
    out, grads = run_with_grads(backend, *args, pos_grad=pos_grad)
    out_ref, grads_ref = run_with_grads("reference", *args, pos_grad=pos_grad)
    tol = TOL[dtype]
    torch.testing.assert_close(out, out_ref, **tol)
    assert out.dtype == out_ref.dtype
    for a, b in zip(grads, grads_ref):
        assert a.dtype == b.dtype
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a / scale, b / scale, **tol)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
@pytest.mark.parametrize("with_weight", [True, False])
def test_parity_random(backend, dtype, with_weight):
    needs(backend)
    x, pos, frame, seq = random_structure(7, n=15, channels=6, dtype=dtype)
    weights, biases, w = params(8, kernel_dims=(16, 32), l=5, channels=6, dtype=dtype, with_weight=with_weight)
    ei = radius_edges(pos, 7.0)
    ei = ei[:, torch.randperm(ei.size(1), generator=torch.Generator().manual_seed(0))]  # unsorted edge list
    assert_parity(backend, dtype, x, pos, frame, seq, ei, weights, biases, w, 7.0, 5)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_parity_real_protein(backend, dtype, real_chain):
    needs(backend)
    pos, frame, seq = real_chain
    n = pos.size(0) if backend == "extension" else 30
    pos, frame, seq = pos[:n], frame[:n], seq[:n]
    x = torch.randn(n, 24, generator=torch.Generator().manual_seed(4)).to(dtype)
    weights, biases, w = params(9, kernel_dims=(16, 32), l=11, channels=24, out=16, dtype=torch.float32)
    ei = radius_edges(pos.float(), 10.0)
    assert_parity(backend, dtype, x, pos.float(), frame.float(), seq, ei, weights, biases, w, 10.0, 11, pos_grad=True)


@pytest.mark.parametrize("backend", FUSED)
def test_parity_batched_real_proteins(backend):
    needs(backend)
    proteins = real_proteins(2, 30, 80)
    assert len(proteins) == 2
    pos = torch.cat([p.pos.double()[:20] for p in proteins])
    frame = torch.cat([residue_frames(p.pos.double()[:20]) for p in proteins])
    seq = torch.cat([p.residue_number.long()[:20] for p in proteins])
    batch = torch.arange(2).repeat_interleave(20)
    ei = radius_edges(pos, 9.0, batch)
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    weights, biases, w = params(2, kernel_dims=(8,), l=7, channels=5)
    assert_parity(backend, torch.float64, x, pos, frame, seq, ei, weights, biases, w, 9.0, 7)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_short_proteins(backend, n):
    needs(backend)
    x, pos, frame, seq = random_structure(n, n=n, channels=4)
    weights, biases, w = params(n, kernel_dims=(16,), l=3, channels=4)
    ei = radius_edges(pos, 10.0)
    assert_parity(backend, torch.float64, x, pos, frame, seq, ei, weights, biases, w, 10.0, 3)
    out = cdconv(x, pos, frame, seq, ei, weights, biases, w, 10.0, 3, backend=backend)
    torch.testing.assert_close(out, definition(x, pos, frame, seq, ei, weights, biases, w, 10.0, 3))


@pytest.mark.parametrize("backend", FUSED)
def test_isolated_nodes_and_large_offsets(backend):
    needs(backend)
    x, pos, frame, seq = random_structure(3, n=10, channels=4)
    seq = torch.tensor([1, 2, 3, 30, 31, 100, 101, 102, 400, 401])  # gaps far beyond the cutoff
    weights, biases, w = params(3, kernel_dims=(16, 8), l=5, channels=4)
    ei = radius_edges(pos, 6.0)
    keep = (ei[1] != 4) & (ei[1] != 7)  # nodes 4 and 7 receive nothing, not even their self loop
    ei = ei[:, keep]
    out = cdconv(x, pos, frame, seq, ei, weights, biases, None, 6.0, 5, backend=backend)
    assert out[4].abs().max() == 0 and out[7].abs().max() == 0
    torch.testing.assert_close(out, definition(x, pos, frame, seq, ei, weights, biases, None, 6.0, 5))
    assert_parity(backend, torch.float64, x, pos, frame, seq, ei, weights, biases, w, 6.0, 5)


@pytest.mark.parametrize("backend", FUSED)
def test_no_edges(backend):
    needs(backend)
    x, pos, frame, seq = random_structure(3, n=5, channels=4)
    weights, biases, w = params(3, kernel_dims=(8,), l=3, channels=4)
    ei = torch.empty(2, 0, dtype=torch.int64)
    out, grads = run_with_grads(backend, x, pos, frame, seq, ei, weights, biases, w, 6.0, 3)
    assert out.shape == (5, 5) and out.abs().max() == 0
    assert all(g.abs().max() == 0 for g in grads)


def test_extension_is_deterministic_across_thread_counts(real_chain):
    # The C++ op (forward and all three gradients) gives bit-identical results for 1 and 2 threads and
    # between runs. (The differentiable PyTorch part in front of it, the WeightNet, uses BLAS GEMMs whose
    # rounding may depend on the thread count; the full op is checked run to run below.)
    pos, frame, seq = real_chain
    pos, frame = pos.float(), frame.float()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(pos.size(0), 16, generator=g)
    weights, biases, w = params(4, kernel_dims=(16,), l=11, channels=16, out=8, dtype=torch.float32)
    ei = radius_edges(pos, 12.0)
    order, rowptr, source = sort_edges_by_target(ei, pos.size(0))
    kw = kernel_weights(pos, frame, seq, ei[:, order], weights, biases, 12.0, 11, torch.float32)
    grad_out = torch.randn(pos.size(0), 8, generator=g)
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, 2, 1, 2):
            torch.set_num_threads(t)
            out = torch.ops.esmgear_fast.cdconv_aggregate(x, kw, rowptr, source, w)
            agg = torch.ops.esmgear_fast.cdconv_aggregate(x, kw, rowptr, source, None)
            grads = torch.ops.esmgear_fast.cdconv_aggregate_backward(grad_out, x, kw, rowptr, source, w, True, True, True)
            results.append([out, agg, *grads])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(other, results[0]))
    full = [run_with_grads("extension", x, pos, frame, seq, ei, weights, biases, w, 12.0, 11) for _ in range(2)]
    assert torch.equal(full[0][0], full[1][0])
    assert all(torch.equal(a, b) for a, b in zip(full[0][1], full[1][1]))


# --------------------------------------------------------------------------- library registration


def aggregate_inputs(dtype=torch.float64, n=6, e=20, k=3, c=4, with_weight=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g, dtype=torch.float64).to(dtype)
    ei = torch.randint(0, n, (2, e), generator=g)
    order, rowptr, source = sort_edges_by_target(ei, n)
    kw = torch.randn(e, k, generator=g, dtype=torch.float64).to(torch.float64 if dtype == torch.float64 else torch.float32)
    w = torch.randn(k * c, 5, generator=g, dtype=torch.float64).to(dtype) if with_weight else None
    return x, kw, rowptr, source, w


def aggregate_op(backend):
    if backend == "extension":
        return torch.ops.esmgear_fast.cdconv_aggregate
    from esmgear_fast.kernels.cdconv import cdconv_aggregate_triton

    return cdconv_aggregate_triton


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("with_weight", [True, False])
def test_opcheck(backend, with_weight):
    needs(backend)
    for dtype in (torch.float64, torch.float32):
        x, kw, rowptr, source, w = aggregate_inputs(dtype, with_weight=with_weight)
        x.requires_grad_(True)
        kw.requires_grad_(True)
        if w is not None:
            w.requires_grad_(True)
        torch.library.opcheck(aggregate_op(backend), (x, kw, rowptr, source, w))


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("with_weight", [True, False])
def test_gradcheck_aggregate(backend, with_weight):
    needs(backend)
    # (small for triton: the interpreter runs every gradcheck perturbation)
    size = dict(n=4, e=9, k=2, c=3) if backend == "triton" else {}
    x, kw, rowptr, source, w = aggregate_inputs(torch.float64, with_weight=with_weight, **size)
    op = aggregate_op(backend)
    inputs = (x.requires_grad_(True), kw.requires_grad_(True), w.requires_grad_(True) if w is not None else None)
    assert torch.autograd.gradcheck(lambda a, b, c: op(a, b, rowptr, source, c), inputs)


@pytest.mark.parametrize("backend", ["extension", "reference"])  # triton: test_gradcheck_aggregate + float64 parity
def test_gradcheck_full_op(backend):
    needs(backend)
    x, pos, frame, seq = random_structure(11, n=6, channels=3)
    weights, biases, w = params(12, kernel_dims=(4, 3), l=3, channels=3, out=2)
    ei = radius_edges(pos, 6.0)
    # pos and frame too: the encoder does not need their gradients, but every backend gives exact ones
    leaves = [t.requires_grad_(True) for t in [x, pos, frame, *weights, *biases, w]]

    def f(x, pos, frame, w0, w1, b0, b1, w):
        return cdconv(x, pos, frame, seq, ei, [w0, w1], [b0, b1], w, 6.0, 3, backend=backend)

    assert torch.autograd.gradcheck(f, leaves)


@pytest.mark.parametrize("backend", FUSED)
def test_compile_fullgraph(backend):
    needs(backend)
    x, pos, frame, seq = random_structure(5, n=10, channels=4, dtype=torch.float32)
    pos, frame = pos.float(), frame.float()
    weights, biases, w = params(5, kernel_dims=(8,), l=3, channels=4, dtype=torch.float32)
    ei = radius_edges(pos, 7.0)
    x.requires_grad_(True)

    def f(x, w):
        return cdconv(x, pos, frame, seq, ei, weights, biases, w, 7.0, 3, backend=backend)

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True)
    out = compiled(x, w)
    torch.testing.assert_close(out, f(x, w), **TOL[torch.float32])
    (gx,) = torch.autograd.grad(out.sum(), x)
    (gx_ref,) = torch.autograd.grad(ef.reference.cdconv(x, pos, frame, seq, ei, weights, biases, w, 7.0, 3).sum(), x)
    torch.testing.assert_close(gx, gx_ref, **TOL[torch.float32])


# --------------------------------------------------------------------------- bad inputs


def good_args():
    x, pos, frame, seq = random_structure(0, n=5, channels=4)
    weights, biases, w = params(0, kernel_dims=(8,), l=3, channels=4)
    return dict(x=x, pos=pos, frame=frame, seq=seq, edge_index=radius_edges(pos, 6.0), weightnet_weights=weights,
                weightnet_biases=biases, weight=w, radius=6.0, seq_cutoff=3)


def bad(**changes):
    args = good_args()
    args.update(changes)
    return args


BAD_CASES = [
    (lambda a: bad(x=a["x"][0]), ValueError, "x must"),
    (lambda a: bad(x=a["x"].long()), TypeError, "x must be float"),
    (lambda a: bad(x=a["x"][:0], pos=a["pos"][:0], frame=a["frame"][:0], seq=a["seq"][:0]), ValueError, "empty graph"),
    (lambda a: bad(pos=a["pos"][:4]), ValueError, "pos must"),
    (lambda a: bad(frame=a["frame"][:, :2]), ValueError, "frame must"),
    (lambda a: bad(seq=a["seq"].double()), TypeError, "seq must be int64"),
    (lambda a: bad(seq=a["seq"][:, None]), ValueError, "seq must"),
    (lambda a: bad(edge_index=a["edge_index"][0]), ValueError, "edge_index must"),
    (lambda a: bad(edge_index=a["edge_index"] + 5), ValueError, "outside"),
    (lambda a: bad(edge_index=a["edge_index"] - 5), ValueError, "outside"),
    (lambda a: bad(edge_index=a["edge_index"].float()), TypeError, "edge_index must be int64"),
    (lambda a: bad(weightnet_weights=[]), ValueError, "one weightnet weight"),
    (lambda a: bad(weightnet_weights=a["weightnet_weights"][0]), TypeError, "sequences"),
    (lambda a: bad(weightnet_weights=[a["weightnet_weights"][0][:, :6]]), ValueError, r"weightnet_weights\[0\]"),
    (lambda a: bad(weightnet_biases=[a["weightnet_biases"][0][:, :3]]), ValueError, r"weightnet_biases\[0\]"),
    (lambda a: bad(weight=a["weight"][:5]), ValueError, "weight must"),
    (lambda a: bad(seq_cutoff=4), ValueError, "odd"),
    (lambda a: bad(seq_cutoff=1), ValueError, "odd"),
    (lambda a: bad(seq_cutoff=3.0), TypeError, "seq_cutoff"),
    (lambda a: bad(radius=0.0), ValueError, "radius"),
    (lambda a: bad(radius=float("nan")), ValueError, "radius"),
    (lambda a: bad(x=a["x"].clone().index_fill_(0, torch.tensor([2]), float("nan"))), ValueError, "x contains NaN"),
    (lambda a: bad(pos=a["pos"].clone().index_fill_(0, torch.tensor([1]), float("inf"))), ValueError, "pos contains"),
]


@pytest.mark.parametrize("backend", ["reference", "extension"])
@pytest.mark.parametrize("case", range(len(BAD_CASES)))
def test_bad_inputs(backend, case):
    make, exc, match = BAD_CASES[case]
    with pytest.raises(exc, match=match):
        cdconv(**make(good_args()), backend=backend)


def test_unknown_and_unavailable_backends():
    args = good_args()
    with pytest.raises(ValueError, match="unknown backend"):
        cdconv(**args, backend="cuda")
    if not TRITON_OK:  # pragma: no cover - the test session sets TRITON_INTERPRET on CPU machines
        with pytest.raises(BackendUnavailableError):
            cdconv(**args, backend="triton")


def test_aggregate_op_rejects_bad_csr():
    x, kw, rowptr, source, w = aggregate_inputs(torch.float32)
    op = torch.ops.esmgear_fast.cdconv_aggregate
    with pytest.raises(RuntimeError, match="source"):
        op(x, kw, rowptr, source + 100, w)
    with pytest.raises(RuntimeError, match="rowptr"):
        op(x, kw, rowptr.flip(0), source, w)
    with pytest.raises(RuntimeError, match="kernel_weight must be"):
        op(x, kw.double(), rowptr, source, w)


def test_dense_weightnet_equals_reference_weightnet():
    # the fused backends' WeightNet formulation (one-hot expanded GEMMs) against the original's per-edge
    # index_select + bmm, values and gradients, with offsets covering every WeightNet
    g = torch.Generator().manual_seed(3)
    features = torch.randn(50, 7, generator=g, dtype=torch.float64, requires_grad=True)
    index = torch.cat([torch.arange(5), torch.randint(0, 5, (45,), generator=g)])
    weights, biases, _ = params(6, kernel_dims=(16, 32, 8), l=5, channels=1, with_weight=False)
    leaves = [features] + [t.requires_grad_(True) for t in weights + biases]
    dense = weightnet_dense(features, index, weights, biases, 5)
    ref = reference_weightnet(features, index, weights, biases)
    torch.testing.assert_close(dense, ref, rtol=1e-12, atol=1e-12)
    assert (ref < 0).any() and (ref > 0).any()  # both LeakyReLU branches taken
    gd = torch.autograd.grad(dense.sum(), leaves)
    gr = torch.autograd.grad(ref.sum(), leaves)
    for a, b in zip(gd, gr):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
