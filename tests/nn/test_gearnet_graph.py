"""GearNetGraph reproduces TorchDrug's graph construction for ESM-GearNet.

`esmgear_fast.testing.torchdrug_style_graph` re-implements TorchDrug's SequentialEdge /
SpatialEdge / KNNEdge algorithm (residue-range masks per offset, as in
torchdrug.layers.geometry.function) on top of the reference neighbour queries (or torch_cluster);
GearNetGraph must produce the same multiset of typed edges.
"""
import pytest
import torch

from esmgear_fast.data import collate
from esmgear_fast.nn import GearNetGraph, gearnet_graph
from esmgear_fast.testing import real_proteins, torchdrug_style_graph


def as_sorted_triples(edge_list):
    return sorted(map(tuple, edge_list.tolist()))


def check_order(edge_index, edge_type, batch):
    key = torch.stack([batch[edge_index[1]], edge_type, edge_index[1], edge_index[0]], 1).tolist()
    assert key == sorted(key), "edges must be ordered by (protein, relation, target, source)"


@pytest.fixture(scope="module")
def real_batch():
    return collate(real_proteins(n=48, max_len=700))


def test_matches_torchdrug_algorithm_on_real_proteins(real_batch):
    b = real_batch
    edge_index, edge_type = GearNetGraph()(b)
    ours = torch.cat([edge_index.t(), edge_type[:, None]], 1)
    expected = torchdrug_style_graph(b.pos, b.batch, b.chain_id)
    assert as_sorted_triples(ours) == as_sorted_triples(expected)
    check_order(edge_index, edge_type, b.batch)
    counts = torch.bincount(edge_type, minlength=7)
    assert counts[2] == b.num_nodes  # one self loop per residue
    assert (counts > 0).all()


def test_relation_semantics_on_real_proteins(real_batch):
    b = real_batch
    edge_index, edge_type = GearNetGraph()(b)
    src, tgt = edge_index
    assert torch.equal(b.batch[src], b.batch[tgt])
    seq = edge_type < 5
    assert torch.equal((tgt - src)[seq], edge_type[seq] - 2)
    assert torch.equal(b.chain_id[src][seq], b.chain_id[tgt][seq])
    spatial = ~seq
    assert ((tgt - src)[spatial].abs() >= 5).all()
    dist = (b.pos[src] - b.pos[tgt]).norm(dim=-1)
    assert (dist[edge_type == 5] < 10.0).all()
    # The radius cap applies before the sequence filter: at most 32 radius edges per target.
    assert torch.bincount(tgt[edge_type == 5], minlength=b.num_nodes).max() <= 32
    assert torch.bincount(tgt[edge_type == 6], minlength=b.num_nodes).max() <= 10


def test_backends_agree(real_batch):
    a = GearNetGraph(backend="extension")(real_batch)
    r = GearNetGraph(backend="reference")(real_batch)
    assert torch.equal(a[0], r[0]) and torch.equal(a[1], r[1])


def test_duplicate_positions_and_tiny_proteins():
    # Protein 0: one residue; protein 1: two residues; protein 2: 12 residues, two of them sharing
    # coordinates (dropped from spatial relations, kept in sequential ones).
    g = torch.Generator().manual_seed(0)
    pos = torch.cat([torch.zeros(1, 3), torch.tensor([[0.0, 0, 0], [3.8, 0, 0]]), torch.randn(12, 3, generator=g) * 4])
    pos[10] = pos[3]
    batch = torch.tensor([0] + [1] * 2 + [2] * 12)
    chain = torch.zeros(15, dtype=torch.long)
    edge_index, edge_type = gearnet_graph(pos, batch, chain, radius=100.0, min_distance=0)
    triples = as_sorted_triples(torch.cat([edge_index.t(), edge_type[:, None]], 1))
    assert triples == as_sorted_triples(torchdrug_style_graph(pos, batch, chain, radius=100.0, min_distance=0))
    spatial = edge_type >= 5
    assert not ((edge_index[0] == 3) & (edge_index[1] == 10) & spatial).any()
    assert ((edge_index[0] == 0) & (edge_index[1] == 0)).sum() == 1  # only the sequential self loop


def test_chain_aware_option():
    # Two chains in one protein, indices adjacent at the chain break but far apart in space? No:
    # close in space, so the TorchDrug default drops the cross-chain pair while chain-aware keeps it.
    pos = torch.tensor([[0.0, 0, 0], [3.8, 0, 0], [7.6, 0, 0], [7.6, 4.0, 0], [3.8, 4.0, 0], [0, 4.0, 0]])
    batch = torch.zeros(6, dtype=torch.long)
    chain = torch.tensor([0, 0, 0, 1, 1, 1])
    default = gearnet_graph(pos, batch, chain, radius=4.5, knn_k=0, min_distance=3)
    aware = gearnet_graph(pos, batch, chain, radius=4.5, knn_k=0, min_distance=3, chain_aware_min_distance=True)
    pair = lambda ei, et: set(map(tuple, ei[:, et == 5].t().tolist()))  # noqa: E731
    assert (2, 3) not in pair(*default) and (3, 2) not in pair(*default)  # |2 - 3| < 3
    assert {(2, 3), (3, 2), (1, 4), (4, 1), (0, 5), (5, 0)} <= pair(*aware)
    # Sequential edges never cross the chain break.
    seq = default[1] < 5
    assert not ((default[0][0] == 2) & (default[0][1] == 3) & seq).any()


def test_matches_torch_cluster_peer_when_installed(real_batch):
    # TorchDrug itself calls torch_cluster. With no cap binding (torch_cluster's CPU cap picks an
    # arbitrary subset) and distinct distances, both must give the same edges.
    torch_cluster = pytest.importorskip("torch_cluster")
    b = real_batch
    peer = torchdrug_style_graph(
        b.pos, b.batch, b.chain_id, cap=None,
        radius_fn=lambda p, r, bt, cap: torch_cluster.radius_graph(p, r, bt, max_num_neighbors=10_000),
        knn_fn=lambda p, k, bt: torch_cluster.knn_graph(p, k, bt),
    )
    edge_index, edge_type = gearnet_graph(b.pos, b.batch, b.chain_id, max_num_neighbors=None)
    assert as_sorted_triples(torch.cat([edge_index.t(), edge_type[:, None]], 1)) == as_sorted_triples(peer)
