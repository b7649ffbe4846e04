"""Each method on fixed, decodable representations (a one-hot stand-in model): targets and losses against
plain computations from the formulas, sampled edges absent from the graph the encoder sees, crops, masks."""
import math

import numpy as np
import pytest
import torch

from esmgear_fast.pretrain import build_pretrain_task, method_options, METHODS
from esmgear_fast.testing import real_proteins
from esmgear_fast.data import collate

from pretrain_helpers import capture_input, decode


def _plain_ce(logits, target):
    # -log softmax at the target, averaged (written out, no F.cross_entropy)
    z = logits.double()
    lse = z.max(-1).values + (z - z.max(-1, keepdim=True).values).exp().sum(-1).log()
    return float((lse - z[torch.arange(len(target)), target]).mean())


def _edge_set(graph):
    return {tuple(e) for e in torch.cat([graph["edge_index"], graph["edge_type"][None]]).t().tolist()}


def _np_angle_bin(pi, pj, pk):
    v1, v2 = pi - pj, pk - pj
    cos = (v1 * v2).sum(-1) / (np.linalg.norm(v1, axis=-1) * np.linalg.norm(v2, axis=-1))
    theta = np.arccos(np.clip(cos, -1, 1))
    return np.minimum(np.floor(theta / (np.pi / 8)), 7).astype(int), theta


def _np_dihedral_bin(p0, p1, p2, p3):
    # |signed dihedral| of the path p0-p1-p2-p3 (praxeolitic formula), binned over [0, pi]
    b0, b1, b2 = p0 - p1, p2 - p1, p3 - p2
    b1n = b1 / np.linalg.norm(b1, axis=-1, keepdims=True)
    v = b0 - (b0 * b1n).sum(-1, keepdims=True) * b1n
    w = b2 - (b2 * b1n).sum(-1, keepdims=True) * b1n
    x = (v * w).sum(-1)
    y = (np.cross(b1n, v) * w).sum(-1)
    theta = np.abs(np.arctan2(y, x))
    return np.minimum(np.floor(theta / (np.pi / 8)), 7).astype(int), theta


def _near_boundary(theta, tol=1e-4):
    edges = np.arange(9) * np.pi / 8
    return np.abs(theta[:, None] - edges[None]).min(-1) < tol


def test_residue_type(one_hot_model, batch):
    torch.manual_seed(0)
    task = build_pretrain_task("residue_type", one_hot_model)
    seen = capture_input(task.mlp)
    out = task({"protein": batch})
    call = one_hot_model.calls[-1]
    seen_batch, mask = call["batch"], call["residue_mask"]
    assert seen_batch.num_residues.tolist() == [min(n, 100) for n in batch.num_residues.tolist()]
    counts = torch.bincount(seen_batch.batch[mask], minlength=batch.num_proteins).tolist()
    assert counts == [max(1, math.floor(0.15 * n)) for n in seen_batch.num_residues.tolist()]
    (nodes,) = decode(seen[0], 1, one_hot_model.output_dim)
    assert sorted(nodes.tolist()) == mask.nonzero().squeeze(1).tolist()       # the head sees the masked ones
    assert torch.equal(out.target, seen_batch.residue_type[nodes])
    assert out.loss.item() == pytest.approx(_plain_ce(out.pred, out.target), rel=1e-5)


def test_distance(one_hot_model, batch):
    torch.manual_seed(1)
    task = build_pretrain_task("distance", one_hot_model)
    seen = capture_input(task.mlp)
    out = task({"protein": batch})
    call = one_hot_model.calls[-1]
    b, g = call["batch"], call["graph"]
    src, dst = decode(seen[0], 2, one_hot_model.output_dim)
    assert len(src) == 256 * batch.num_proteins
    target = np.linalg.norm(b.pos.numpy()[src] - b.pos.numpy()[dst], axis=-1)
    np.testing.assert_allclose(out.target.numpy(), target, rtol=1e-5, atol=1e-5)
    assert bool((src != dst).all())                                           # no self loops drawn
    full = _edge_set(one_hot_model.build_graph(b))                            # the cropped batch's graph
    remaining = _edge_set(g)
    sampled_pairs = set(zip(src.tolist(), dst.tolist()))
    seen_pairs = {(s, d) for s, d, _ in remaining}
    removed = full - remaining
    # every sampled (source, target) pair lost at least one typed edge, and no unsampled edge was removed
    assert {(s, d) for s, d, _ in removed} <= sampled_pairs
    assert all((s, d) in {(x, y) for x, y, _ in removed} for s, d in sampled_pairs)
    plain = float(((out.pred.double() - torch.from_numpy(target)) ** 2).mean())
    assert out.loss.item() == pytest.approx(plain, rel=1e-4)
    assert len(seen_pairs) > 0


def test_angle_bins_and_removal(one_hot_model):
    torch.manual_seed(2)
    batch = collate(real_proteins(3, 80, 200))
    task = build_pretrain_task("angle", one_hot_model)
    seen = capture_input(task.mlp)
    out = task({"protein": batch})
    b, g = one_hot_model.calls[-1]["batch"], one_hot_model.calls[-1]["graph"]
    i, j, k = decode(seen[0], 3, one_hot_model.output_dim)
    assert len(i) == 512 * 3
    pos = b.pos.double().numpy()
    expect, theta = _np_angle_bin(pos[i], pos[j], pos[k])
    ok = ~_near_boundary(theta)
    assert ok.mean() > 0.99
    np.testing.assert_array_equal(out.target.numpy()[ok], expect[ok])
    assert len(set(expect.tolist())) >= 5                                    # many bins really occur
    assert bool((i != k).all() & (i != j).all() & (j != k).all())
    full = {(s, d) for s, d, _ in _edge_set(one_hot_model.build_graph(b))}
    remaining = {(s, d) for s, d, _ in _edge_set(g)}
    for kk, jj, ii in zip(k.tolist(), j.tolist(), i.tolist()):
        assert (kk, jj) in full and (jj, ii) in full
    # both edges of every sampled pair are gone unless the pair is also joined by another relation
    removed_any = sum((kk, jj) not in remaining for kk, jj in zip(k.tolist(), j.tolist()))
    assert removed_any > 0.5 * len(k)
    assert out.loss.item() == pytest.approx(_plain_ce(out.pred, out.target), rel=1e-5)


def test_dihedral_bins(one_hot_model):
    torch.manual_seed(3)
    batch = collate(real_proteins(3, 80, 200))
    task = build_pretrain_task("dihedral", one_hot_model)
    seen = capture_input(task.mlp)
    out = task({"protein": batch})
    b = one_hot_model.calls[-1]["batch"]
    i, j, k, t = decode(seen[0], 4, one_hot_model.output_dim)                 # TorchDrug order i, j, k, t
    pos = b.pos.double().numpy()
    expect, theta = _np_dihedral_bin(pos[i], pos[j], pos[t], pos[k])          # path i - j - t - k
    ok = ~_near_boundary(theta) & (i != k).numpy()
    assert ok.mean() > 0.9
    np.testing.assert_array_equal(out.target.numpy()[ok], expect[ok])
    assert len(set(expect.tolist())) >= 5
    full = {(s, d) for s, d, _ in _edge_set(one_hot_model.build_graph(b))}
    for kk, tt, jj, ii in zip(k.tolist(), t.tolist(), j.tolist(), i.tolist()):
        assert (kk, tt) in full and (tt, jj) in full and (jj, ii) in full and kk != jj and tt != ii
    assert out.loss.item() == pytest.approx(_plain_ce(out.pred, out.target), rel=1e-5)


def test_multiview(one_hot_model, batch):
    torch.manual_seed(4)
    task = build_pretrain_task("multiview", one_hot_model)
    projected = []
    task.mlp.register_forward_hook(lambda m, i, o: projected.append(o.detach().double()))
    out = task({"protein": batch})
    calls = one_hot_model.calls[-2:]
    for call in calls:
        cb = call["batch"]
        assert cb.num_residues.tolist() == [min(n, 50) for n in batch.num_residues.tolist()]
        for p in range(batch.num_proteins):
            L, n = int(batch.num_residues[p]), int(cb.num_residues[p])
            full = batch.pos[batch.ptr[p]:batch.ptr[p + 1]]
            crop = cb.pos[cb.ptr[p]:cb.ptr[p + 1]]
            starts = [s for s in range(L - n + 1) if torch.equal(full[s:s + n], crop)]
            assert len(starts) == 1                                            # a contiguous window
    x, y = projected
    loss = 0.0
    for a in range(len(x)):
        sims = [float(torch.dot(x[a], y[c]) / (x[a].norm() * y[c].norm())) / 0.07 for c in range(len(y))]
        loss += -(sims[a] - math.log(sum(math.exp(s) for s in sims)))
    assert out.loss.item() == pytest.approx(loss / len(x), rel=1e-4)


def test_unknown_method_and_option(one_hot_model):
    with pytest.raises(ValueError, match="unknown pre-training method 'foo'.*residue_type"):
        build_pretrain_task("foo", one_hot_model)
    with pytest.raises(ValueError, match="unknown option.*mask_ratee"):
        build_pretrain_task("residue_type", one_hot_model, mask_ratee=0.2)
    assert method_options("siamdiff")["crop_length"] == 150
    assert set(METHODS) == {"residue_type", "distance", "angle", "dihedral", "multiview", "siamdiff"}


def test_all_residues_masked_and_single_protein(one_hot_model, batch):
    torch.manual_seed(5)
    task = build_pretrain_task("residue_type", one_hot_model, mask_rate=1.0)
    out = task({"protein": batch})
    assert bool(one_hot_model.calls[-1]["residue_mask"].all()) and math.isfinite(out.loss.item())
    single = collate(real_proteins(1, 40, 60))
    mv = build_pretrain_task("multiview", one_hot_model)
    assert mv({"protein": single}).loss.item() == pytest.approx(0.0, abs=1e-6)   # no negatives: documented 0
