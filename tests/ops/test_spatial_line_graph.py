"""esmgear_fast.ops.spatial_line_graph (GearNet-Edge's line graph) against its reference and an
independent brute-force definition, on random and real protein graphs."""
import math

import pytest
import torch

from esmgear_fast import BackendUnavailableError
from esmgear_fast.ops.spatial_line_graph import spatial_line_graph
from esmgear_fast.reference.spatial_line_graph import spatial_line_graph as reference_line_graph

COMPILED = ["extension"] + (["extension_cuda"] if torch.cuda.is_available() else [])


def run(backend, pos, edge_index, num_angle_bin=8):
    if backend == "extension_cuda":
        index, types = spatial_line_graph(pos.cuda(), edge_index.cuda(), num_angle_bin, backend="extension")
        return index.cpu(), types.cpu()
    return spatial_line_graph(pos, edge_index, num_angle_bin, backend=backend)


def brute_force(pos, edge_index, num_angle_bin):
    """The definition, written independently: loops over residues j, then edges a = (k -> j) and
    b = (j -> i) in ascending id; the angle from math.atan2 in double precision."""
    src, dst = edge_index.tolist()
    p = pos.double().tolist()
    out = []
    for j in range(len(p)):
        for a in [e for e in range(len(src)) if dst[e] == j]:
            for b in [e for e in range(len(src)) if src[e] == j]:
                v1 = [p[dst[b]][d] - p[j][d] for d in range(3)]
                v2 = [p[src[a]][d] - p[j][d] for d in range(3)]
                cross = [v1[1] * v2[2] - v1[2] * v2[1], v1[2] * v2[0] - v1[0] * v2[2], v1[0] * v2[1] - v1[1] * v2[0]]
                y = math.sqrt(sum(c * c for c in cross))
                x = sum(u * v for u, v in zip(v1, v2)) + 0.0
                angle = math.atan2(y, x) if (x != 0 or y != 0) else 0.0
                out.append((a, b, min(int(angle / math.pi * num_angle_bin), num_angle_bin - 1)))
    return out


def as_list(index, types):
    return [(int(a), int(b), int(t)) for (a, b), t in zip(index.t().tolist(), types.tolist())]


def random_graph(seed, num_nodes=12, num_edges=60, dtype=torch.float64):
    """Random positions and edges, including self loops, duplicates, reverse pairs and residues
    without incoming or outgoing edges (indices only up to num_nodes - 2)."""
    g = torch.Generator().manual_seed(seed)
    pos = (torch.randn(num_nodes, 3, generator=g) * 5).to(dtype)
    ei = torch.randint(0, num_nodes - 2, (2, num_edges), generator=g)
    ei = torch.cat([ei, ei[:, :5].flip(0), torch.tensor([[3], [3]]), torch.tensor([[num_nodes - 2], [0]])], 1)
    return pos, ei


# ----------------------------------------------------------------------------- definition


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reference_matches_brute_force(seed):
    pos, ei = random_graph(seed)
    index, types = reference_line_graph(pos, ei, 8)
    assert as_list(index, types) == brute_force(pos, ei, 8)


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("num_angle_bin", [1, 3, 8])
def test_compiled_matches_brute_force(backend, num_angle_bin):
    pos, ei = random_graph(5)
    assert as_list(*run(backend, pos, ei, num_angle_bin)) == brute_force(pos, ei, num_angle_bin)


def test_hand_made_angles_and_boundaries():
    """Centre j = 0; k = 1 on +x; targets at 0, 45 (boundary of bins 1|2), 90 (bin 4 exactly),
    135 (bin 6 exactly), 180 degrees (pi: last bin) and a coincident point (zero vector: bin 0)."""
    pos = torch.tensor([[0.0, 0, 0], [2.0, 0, 0], [3.0, 0, 0], [1.0, 1, 0], [0, 1.5, 0], [-1.0, 1, 0],
                        [-4.0, 0, 0], [0.0, 0, 0]])
    ei = torch.tensor([[1, 0, 0, 0, 0, 0, 0], [0, 2, 3, 4, 5, 6, 7]])
    expected = [(0, 1, 0), (0, 2, 2), (0, 3, 4), (0, 4, 6), (0, 5, 7), (0, 6, 0)]
    for backend in ["reference"] + COMPILED:
        for dtype in (torch.float32, torch.float64):
            assert as_list(*run(backend, pos.to(dtype), ei)) == expected, (backend, dtype)


# ------------------------------------------------------------------ compiled == reference


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(4))
def test_random_graphs_identical_to_reference(backend, dtype, seed):
    pos, ei = random_graph(seed, num_nodes=60, num_edges=900, dtype=dtype)
    index, types = run(backend, pos, ei)
    ref_index, ref_types = reference_line_graph(pos, ei, 8)
    assert torch.equal(index, ref_index)
    assert torch.equal(types, ref_types)


@pytest.fixture(scope="module")
def real_graphs():
    from esmgear_fast.data import collate
    from esmgear_fast.nn import GearNetGraph
    from esmgear_fast.testing import real_proteins

    proteins = real_proteins(24, min_len=30, max_len=1200)
    out = []
    for i in range(0, len(proteins), 8):
        b = collate(proteins[i:i + 8])
        ei, _ = GearNetGraph()(b)
        out.append((b.pos, ei))
    return out


@pytest.mark.parametrize("backend", COMPILED)
def test_real_protein_graphs_identical_to_reference(backend, real_graphs):
    """GearNetGraph (sequential incl. self loops, radius, kNN) on 24 real chains, in batches of 8:
    the same edges, in the same order, with the same angle bins (about 2M line-graph edges)."""
    total = 0
    for pos, ei in real_graphs:
        index, types = run(backend, pos, ei)
        ref_index, ref_types = reference_line_graph(pos, ei, 8)
        assert torch.equal(index, ref_index)
        mismatched = int((types != ref_types).sum())
        assert mismatched == 0, f"{mismatched} of {types.numel()} angle bins differ"
        total += types.numel()
    assert total > 1_000_000


def test_same_result_for_any_thread_count(real_graphs):
    pos, ei = real_graphs[0]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = spatial_line_graph(pos, ei, backend="extension")
    finally:
        torch.set_num_threads(threads)
    many = spatial_line_graph(pos, ei, backend="extension")
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])


def test_reference_matches_real_torchdrug(real_graphs):
    """TorchDrug's own SpatialLineGraph (optional peer: PYTHONPATH=<dir with torchdrug>)."""
    td = pytest.importorskip("torchdrug")
    from torchdrug import layers  # noqa: F401

    pos, ei = real_graphs[0]
    # One packed graph holding the whole batch (edges never cross proteins, so this is the same).
    graph = td.data.PackedGraph(torch.stack([ei[0], ei[1], torch.zeros_like(ei[0])], 1),
                                num_nodes=torch.tensor([pos.size(0)]), num_edges=torch.tensor([ei.size(1)]),
                                offsets=torch.zeros(ei.size(1), dtype=torch.long), num_relation=1)
    with graph.node():
        graph.node_position = pos
    line = td.layers.SpatialLineGraph(8)(graph)
    expected = line.edge_list
    ours_index, ours_types = spatial_line_graph(pos, ei, 8, backend="extension")
    # TorchDrug's argsort is not stable, so compare the (a, b, type) triples as sorted lists.
    got = torch.stack([ours_index[0], ours_index[1], ours_types], 1)
    assert got.shape == expected.shape
    key = lambda t: t[:, 0] * (ei.size(1) + 1) + t[:, 1]  # noqa: E731
    assert torch.equal(got[key(got).argsort()], expected[key(expected).argsort()])


# -------------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("backend", ["reference"] + COMPILED)
def test_empty_graphs(backend):
    for n in (0, 1, 5):
        index, types = run(backend, torch.randn(n, 3), torch.zeros(2, 0, dtype=torch.long))
        assert index.shape == (2, 0) and types.shape == (0,)
        assert index.dtype == torch.long and types.dtype == torch.long
    # Edges, but no residue has both an incoming and an outgoing edge: no line-graph edge.
    index, types = run(backend, torch.randn(4, 3), torch.tensor([[0, 0, 1], [2, 3, 3]]))
    assert index.shape == (2, 0) and types.shape == (0,)


@pytest.mark.parametrize("backend", ["reference"] + COMPILED)
def test_coincident_positions(backend):
    """All residues at one point: every vector has length zero, every angle is bin 0."""
    pos, ei = random_graph(3, num_nodes=10, num_edges=40)
    pos = torch.ones_like(pos) * 1.25
    index, types = run(backend, pos, ei)
    assert types.numel() > 0 and torch.equal(types, torch.zeros_like(types))
    assert torch.equal(index, reference_line_graph(pos, ei, 8)[0])


def test_half_precision_and_int32_inputs():
    pos, ei = random_graph(4, dtype=torch.float32)
    expected = spatial_line_graph(pos.half().float(), ei, backend="extension")
    got = spatial_line_graph(pos.half(), ei.int(), backend="extension")
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


@pytest.mark.parametrize("backend", ["reference"] + COMPILED)
def test_bad_inputs_raise(backend):
    pos, ei = random_graph(0, dtype=torch.float32)
    cases = [
        ((pos[:, :2], ei), ValueError, "pos must have shape"),
        ((pos.long(), ei), TypeError, "floating-point"),
        ((pos, ei[:1]), ValueError, "edge_index must have shape"),
        ((pos, ei.float()), TypeError, "int64"),
        ((pos, torch.cat([ei, torch.tensor([[0], [pos.size(0)]])], 1)), ValueError, "outside"),
        ((pos, torch.cat([ei, torch.tensor([[-1], [0]])], 1)), ValueError, "outside"),
        ((torch.where(torch.arange(pos.size(0))[:, None] == 4, float("nan"), pos), ei), ValueError, "row 4"),
        (("pos", ei), TypeError, "pos must be a tensor"),
    ]
    for args, error, match in cases:
        with pytest.raises(error, match=match):
            run(backend, *args)
    with pytest.raises(ValueError, match="num_angle_bin"):
        run(backend, pos, ei, 0)


def test_kernel_checks_direct_calls():
    """The C++ op validates on its own (it can be called without the Python wrapper)."""
    pos, ei = random_graph(0, dtype=torch.float32)
    with pytest.raises(ValueError, match="outside"):
        torch.ops.esmgear_fast.spatial_line_graph(pos, ei + 100, 8)
    with pytest.raises(ValueError, match="non-finite"):
        torch.ops.esmgear_fast.spatial_line_graph(pos * float("inf"), ei, 8)
    with pytest.raises(ValueError, match="num_angle_bin"):
        torch.ops.esmgear_fast.spatial_line_graph(pos, ei, 0)


def test_backend_errors():
    pos, ei = random_graph(0)
    with pytest.raises(BackendUnavailableError):
        spatial_line_graph(pos, ei, backend="triton")
    with pytest.raises(ValueError, match="unknown backend"):
        spatial_line_graph(pos, ei, backend="fast")


# ------------------------------------------------------------------------- torch integration


def test_opcheck():
    pos, ei = random_graph(1, dtype=torch.float32)
    torch.library.opcheck(torch.ops.esmgear_fast.spatial_line_graph.default, (pos, ei, 8))
    torch.library.opcheck(torch.ops.esmgear_fast.spatial_line_graph.default, (pos.double(), ei[:, :0], 3))


def test_torch_compile_fullgraph():
    pos, ei = random_graph(2, dtype=torch.float32)

    def line_graph_and_histogram(p, e):
        index, types = spatial_line_graph(p, e, 8, backend="extension")
        return index, torch.bincount(types, minlength=8)

    compiled = torch.compile(line_graph_and_histogram, fullgraph=True)
    for seed in (2, 3):  # a second graph with another line-graph size
        pos, ei = random_graph(seed, dtype=torch.float32)
        got, expected = compiled(pos, ei), line_graph_and_histogram(pos, ei)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
