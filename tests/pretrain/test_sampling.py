"""Sampling semantics: crops, residue masks, edges / pairs / paths (validity, uniformity, skips, removal)."""
import itertools
import math
from collections import Counter

import pytest
import torch

from esmgear_fast.data import collate
from esmgear_fast.io import Protein
from esmgear_fast.pretrain import _sampling as S
from esmgear_fast.testing import real_proteins


def test_random_crop_contiguous_within_bounds(batch):
    torch.manual_seed(0)
    starts_seen = set()
    for _ in range(5):
        cropped, index = S.random_crop(batch, 100)
        lengths = batch.num_residues.tolist()
        assert cropped.num_residues.tolist() == [min(n, 100) for n in lengths]
        for b in range(batch.num_proteins):
            rows = index[cropped.ptr[b]:cropped.ptr[b + 1]] - batch.ptr[b]
            start = int(rows[0])
            assert rows.tolist() == list(range(start, start + min(lengths[b], 100)))      # contiguous
            assert 0 <= start and start + len(rows) <= lengths[b]                          # within bounds
            assert cropped.sequences[b] == batch.sequences[b][start:start + len(rows)]
            if lengths[b] > 100:
                starts_seen.add((b, start))
        assert torch.equal(cropped.pos, batch.pos[index])
        assert torch.equal(cropped.residue_type, batch.residue_type[index])
    assert len(starts_seen) > 2   # the windows move


def test_random_crop_none_and_bad_length(batch):
    same, index = S.random_crop(batch, None)
    assert same is batch and torch.equal(index, torch.arange(batch.num_nodes))
    with pytest.raises(ValueError, match="crop length"):
        S.random_crop(batch, 0)


def _protein(seq, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Protein.from_arrays(seq, torch.randn(len(seq), 3, generator=g) * 5)


def test_residue_mask_rate_minimum_and_unknown():
    torch.manual_seed(0)
    proteins = [_protein("ACDEFGHIKLMNPQRSTVWY" * 3), _protein("GAS"), _protein("XXAXX" * 4)]
    b = collate(proteins)
    for _ in range(20):
        mask = S.sample_residue_mask(b, 0.15)
        counts = torch.bincount(b.batch[mask], minlength=3).tolist()
        assert counts == [max(1, math.floor(n * 0.15)) for n in (60, 3, 20)]
        assert not bool(mask[b.residue_type == 20].any())
    full = S.sample_residue_mask(b, 1.0)
    assert bool(full[b.residue_type != 20].all())          # all (known) residues masked
    with pytest.raises(ValueError, match="no residue of known type"):
        S.sample_residue_mask(collate([_protein("XXXX")]), 0.15)
    with pytest.raises(ValueError, match="mask rate"):
        S.sample_residue_mask(b, 1.5)


def _tiny_graph():
    # two proteins: 0..4 and 5..8, edges typed arbitrarily, with self loops, duplicates and reverses
    e = [(0, 1), (1, 0), (1, 2), (2, 1), (2, 3), (3, 4), (4, 2), (0, 0), (1, 1), (0, 2), (0, 2), (3, 1),
         (5, 6), (6, 7), (7, 8), (8, 5), (6, 5), (7, 7)]
    edge_index = torch.tensor(e).t().contiguous()
    node_batch = torch.tensor([0] * 5 + [1] * 4)
    return {"edge_index": edge_index, "edge_type": torch.arange(len(e)) % 7}, node_batch


def _brute_pairs(ei, exclude):
    out = []
    for a, b in itertools.product(range(ei.size(1)), repeat=2):
        k, j1 = ei[:, a].tolist()
        j2, i = ei[:, b].tolist()
        if j1 != j2 or k == i:
            continue
        if exclude and (k == j1 or j2 == i):
            continue
        out.append((a, b))
    return out


def _brute_paths(ei, exclude):
    out = []
    for a, b, c in itertools.product(range(ei.size(1)), repeat=3):
        k, t1 = ei[:, a].tolist()
        t2, j1 = ei[:, b].tolist()
        j2, i = ei[:, c].tolist()
        if t1 != t2 or j1 != j2 or k == j1 or t2 == i:
            continue
        if exclude and (k == t1 or t2 == j1 or j2 == i):
            continue
        out.append((a, b, c))
    return out


def _check_uniform(samples, valid, num_proteins_groups):
    counts = Counter(samples)
    assert set(counts) <= set(valid), "a sample outside the valid set"
    assert set(counts) == set(valid), "some valid element never drawn"
    # uniform within each protein: every count within 6 sigma of its protein's expectation
    for group, (members, total) in num_proteins_groups.items():
        p = 1.0 / len(members)
        for m in members:
            mean, sd = total * p, math.sqrt(total * p * (1 - p)) + 1e-9
            assert abs(counts[m] - mean) < 6 * sd + 1, (m, counts[m], mean)


@pytest.mark.parametrize("exclude", [True, False])
def test_pairs_and_paths_valid_and_uniform(exclude):
    torch.manual_seed(1)
    graph, nb = _tiny_graph()
    ei = graph["edge_index"]
    S_ = 6000
    a, b, groups, skipped = S.sample_edge_pairs(graph, nb, 2, S_, exclude)
    assert skipped == 0 and groups.tolist() == [0, 1]
    valid = _brute_pairs(ei, exclude)
    by_group = {g: ([v for v in valid if int(nb[ei[1, v[1]]]) == g], S_) for g in (0, 1)}
    _check_uniform(list(zip(a.flatten().tolist(), b.flatten().tolist())), valid, by_group)
    for row, g in enumerate(groups.tolist()):      # each row belongs to its protein
        assert bool((nb[ei[1, b[row]]] == g).all())

    a, b, c, groups, skipped = S.sample_edge_paths(graph, nb, 2, S_, exclude)
    valid = _brute_paths(ei, exclude)
    by_group = {g: ([v for v in valid if int(nb[ei[1, v[2]]]) == g], S_) for g in (0, 1)}
    _check_uniform(list(zip(a.flatten().tolist(), b.flatten().tolist(), c.flatten().tolist())), valid, by_group)

    e, groups, _ = S.sample_edges(graph, nb, 2, S_, exclude)
    drawn = set(e.flatten().tolist())
    loops = {n for n in range(ei.size(1)) if ei[0, n] == ei[1, n]}
    assert (drawn & loops == set()) if exclude else loops <= drawn


def test_skips_small_proteins_and_errors():
    torch.manual_seed(0)
    big = real_proteins(1, 40, 60)[0]
    two, three = _protein("GA", 1), _protein("GAS", 2)
    b = collate([two, big, three])
    from esmgear_fast.nn import GearNetGraph
    ei, et = GearNetGraph()(b)
    graph = {"edge_index": ei, "edge_type": et}
    a, bb, groups, skipped = S.sample_edge_pairs(graph, b.batch, 3, 8)
    assert skipped == 1 and groups.tolist() == [1, 2]           # 2 residues: no pair (k != i)
    a, bb, c, groups, skipped = S.sample_edge_paths(graph, b.batch, 3, 8, min_residues=4)
    assert skipped == 2 and groups.tolist() == [1]              # fewer than 4 residues: skipped
    b2 = collate([two, _protein("AG", 3)])
    ei, et = GearNetGraph()(b2)
    with pytest.raises(ValueError, match="anything to sample"):
        S.sample_edge_pairs({"edge_index": ei, "edge_type": et}, b2.batch, 2, 8)
    with pytest.raises(ValueError, match="residue graph"):
        S.sample_edges(None, b2.batch, 2, 8)


def test_remove_edges_subgraph_mask_edges():
    torch.manual_seed(0)
    graph, nb = _tiny_graph()
    E = graph["edge_index"].size(1)
    out = S.remove_edges(graph, torch.tensor([[0, 3], [3, 17]]))
    kept = [n for n in range(E) if n not in (0, 3, 17)]
    assert torch.equal(out["edge_index"], graph["edge_index"][:, kept])
    assert torch.equal(out["edge_type"], graph["edge_type"][kept])
    with pytest.raises(ValueError, match="per-edge"):
        S.remove_edges(dict(graph, extra=torch.zeros(1)), torch.tensor([0]))

    sub = S.subgraph(graph, torch.tensor([1, 2, 3]), 9)
    expect = [[s - 1, d - 1] for s, d in graph["edge_index"].t().tolist() if s in (1, 2, 3) and d in (1, 2, 3)]
    assert sub["edge_index"].t().tolist() == expect

    for _ in range(10):
        masked = S.mask_edges(graph, nb, 2, 0.15)
        before = torch.bincount(nb[graph["edge_index"][1]], minlength=2)
        after = torch.bincount(nb[masked["edge_index"][1]], minlength=2)
        assert (before - after).tolist() == [max(1, math.floor(n * 0.15)) for n in before.tolist()]
