"""Two optimiser steps of every method with the real FusionNetwork (random tiny ESM + GearNet) on real
structures: loss finite, structure encoder weights changed, ESM bit-identical and outside the optimiser."""
import math

import pytest
import torch

from esmgear_fast.data import collate
from esmgear_fast.esm import load_esm
from esmgear_fast.models import GearNet
from esmgear_fast.models.fusion import FusionNetwork
from esmgear_fast.pretrain import METHODS, build_pretrain_task
from esmgear_fast.pretrain.siamdiff import edge_to_node, noise_schedule, scatter_mean
from esmgear_fast.testing import real_proteins


@pytest.fixture(scope="module")
def small_batch():
    return collate(real_proteins(2, 40, 90) + real_proteins(1, 120, 180))


def _model(seed=0):
    torch.manual_seed(seed)
    esm = load_esm("random:tiny")
    return FusionNetwork(esm, GearNet(esm.embed_dim, [16, 16]))


@pytest.mark.parametrize("method", list(METHODS))
def test_two_steps(method, small_batch):
    torch.manual_seed(1)
    options = {"num_sample": 32} if method in ("distance", "angle", "dihedral") else {}
    task = build_pretrain_task(method, _model(), options)
    esm_before = {k: v.clone() for k, v in task.model.sequence_model.state_dict().items()}
    gear_before = {k: v.clone() for k, v in task.model.structure_model.state_dict().items()}
    groups = task.parameter_groups(1e-3)
    esm_ids = {id(p) for p in task.model.sequence_model.parameters()}
    assert all(id(p) not in esm_ids for g in groups for p in g["params"])
    opt = torch.optim.Adam(groups)
    task.train()
    for _ in range(2):
        out = task({"protein": small_batch})
        assert math.isfinite(out.loss.item())
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert not task.model.sequence_model.training                     # frozen ESM stays in eval mode
    for k, v in task.model.sequence_model.state_dict().items():
        assert torch.equal(v, esm_before[k]), k                       # bit-identical
    assert all(p.grad is None for p in task.model.sequence_model.parameters())
    assert all(id(p) not in esm_ids for p in opt.state)               # no optimiser state for ESM
    changed = [k for k, v in task.model.structure_model.state_dict().items()
               if v.is_floating_point() and not torch.equal(v, gear_before[k])]
    assert any("layers.0" in k and "weight" in k for k in changed)
    metrics = task.evaluate(out.pred, out.target)
    assert all(math.isfinite(v) for v in metrics.values()) and task.selection_metric in metrics


def test_frozen_esm_records_no_graph(small_batch):
    task = build_pretrain_task("residue_type", _model())
    rep = task.model.encode_sequence(small_batch)
    assert rep.grad_fn is None and not rep.requires_grad              # as under torch.no_grad()
    unfrozen = build_pretrain_task("residue_type", _model(), fix_sequence_model=False)
    assert unfrozen.model.encode_sequence(small_batch).requires_grad
    names = [g["name"] for g in unfrozen.parameter_groups(1e-3, sequence_model_lr_ratio=0.1)]
    assert names == ["structure+heads", "sequence_model"]


def test_noise_schedule_values():
    alphas = noise_schedule(100, 1e-3, 0.1)
    # by hand: beta_0 = 1e-3 + 0.099 * sigmoid(-6) = 1e-3 + 0.099 * 0.0024726232 = 0.0012447897
    assert alphas[0].item() == pytest.approx(1 - 0.0012447897, abs=1e-7)
    x = [-6 + 12 * t / 99 for t in range(100)]
    betas = [1e-3 + 0.099 / (1 + math.exp(-v)) for v in x]
    prod, expect = 1.0, []
    for b in betas:
        prod *= 1 - b
        expect.append(prod)
    assert torch.allclose(alphas.double(), torch.tensor(expect, dtype=torch.float64), rtol=1e-5)
    assert bool((alphas[1:] < alphas[:-1]).all())
    assert alphas[-1].item() == pytest.approx(expect[-1], rel=1e-5) and expect[-1] < 0.01


def test_siamdiff_structure_pieces():
    torch.manual_seed(0)
    pos = torch.randn(6, 3) * 4
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 5, 0, 2], [1, 0, 3, 2, 5, 4, 2, 0]])
    score = torch.randn(8)
    got = edge_to_node(score, pos, edge_index)
    expect = torch.zeros(6, 3)
    for n in range(6):
        out_e = [e for e in range(8) if edge_index[0, e] == n]
        in_e = [e for e in range(8) if edge_index[1, e] == n]
        for group, sign in ((out_e, 1.0), (in_e, -1.0)):
            if group:
                vecs = []
                for e in group:
                    d = pos[edge_index[0, e]] - pos[edge_index[1, e]]
                    vecs.append(sign * score[e] * d / d.norm())
                expect[n] += torch.stack(vecs).mean(0)
    assert torch.allclose(got, expect, atol=1e-5)
    assert torch.allclose(scatter_mean(torch.tensor([1.0, 3.0, 5.0]), torch.tensor([0, 0, 2]), 3),
                          torch.tensor([2.0, 0.0, 5.0]))


def test_siamdiff_views_masks_and_targets(small_batch):
    from pretrain_helpers import OneHotModel
    one_hot_model = OneHotModel(output_dim=small_batch.num_nodes)
    torch.manual_seed(3)
    task = build_pretrain_task("siamdiff", one_hot_model, num_noise_level=1, max_mask_ratio=0.5, crop_length=None)
    base = len(one_hot_model.calls)
    out = task({"protein": small_batch})
    v1, v2 = one_hot_model.calls[base:base + 2]
    assert torch.equal(v1["residue_mask"], v2["residue_mask"])           # the same residues in both views
    counts = torch.bincount(small_batch.batch[v1["residue_mask"]], minlength=3).tolist()
    assert counts == [max(1, math.floor(0.5 * n)) for n in small_batch.num_residues.tolist()]  # t=0 of T=1: max rate
    # view 1's graph was built on the unperturbed coordinates; the encoder got perturbed ones
    ref = one_hot_model.build_graph(small_batch)
    assert torch.equal(v1["graph"]["edge_index"], ref["edge_index"])
    alpha = noise_schedule(1, 1e-3, 0.1)[0]
    shift = (v1["batch"].pos - small_batch.pos).std().item()
    assert shift == pytest.approx(math.sqrt(1 - alpha) / math.sqrt(alpha), rel=0.25)
    assert torch.equal(out.target, small_batch.residue_type[v1["residue_mask"]])
    assert math.isfinite(out.loss.item())


@pytest.mark.parametrize("method", list(METHODS))
def test_bf16_autocast_losses_are_float32(method, small_batch):
    torch.manual_seed(2)
    options = {"num_sample": 16} if method in ("distance", "angle", "dihedral") else {}
    task = build_pretrain_task(method, _model(), options)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = task({"protein": small_batch})
    assert out.loss.dtype == torch.float32 and math.isfinite(out.loss.item())
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in task.parameters() if p.grad is not None)
