"""esmgear_fast.metrics against hand-computed values and brute-force numpy definitions (independent of
the code under test), with tied scores, missing labels and undefined cases."""
import math

import numpy as np
import pytest
import torch

from esmgear_fast import metrics as M


# ------------------------------------------------------------- independent brute-force references
def ref_fmax(pred, target):
    """CAFA Fmax, thresholds = distinct scores, positive iff score >= t; NaN targets ignored."""
    pred, target = np.asarray(pred, float), np.asarray(target, float)
    valid = ~np.isnan(target)
    rows = [b for b in range(pred.shape[0]) if valid[b].any()]
    best = 0.0
    for t in np.unique(pred[valid]):
        precisions, recalls = [], []
        for b in rows:
            p = pred[b][valid[b]] >= t
            y = target[b][valid[b]] == 1
            tp = np.sum(p & y)
            if p.sum() > 0:
                precisions.append(tp / p.sum())
            recalls.append(tp / y.sum() if y.sum() > 0 else 0.0)
        if not precisions:
            continue
        P, R = np.mean(precisions), np.mean(recalls)
        if P + R > 0:
            best = max(best, 2 * P * R / (P + R))
    return best


def ref_average_precision(pred, target):
    """sum over distinct thresholds of (recall step) * precision at that threshold."""
    pred, target = np.asarray(pred, float), np.asarray(target, float)
    total = 0.0
    npos = target.sum()
    prev_recall = 0.0
    for t in sorted(np.unique(pred), reverse=True):
        sel = pred >= t
        tp = target[sel].sum()
        recall = tp / npos
        total += (recall - prev_recall) * tp / sel.sum()
        prev_recall = recall
    return total


def ref_auroc(pred, target):
    """Mann-Whitney by counting all positive/negative pairs, ties 1/2."""
    pred, target = np.asarray(pred, float), np.asarray(target)
    pos, neg = pred[target == 1], pred[target == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


def ref_ranks(x):
    x = np.asarray(x, float)
    return np.array([np.sum(x < v) + (np.sum(x == v) + 1) / 2 for v in x])


def ref_spearman(x, y):
    return np.corrcoef(ref_ranks(x), ref_ranks(y))[0, 1]


# ---------------------------------------------------------------------------------- hand values
def test_f1_max_hand_computed():
    # thresholds 0.9 .. 0.1; at 0.3: protein 0 predicts {0, 2} (P 1/2, R 1), protein 1 {1, 2} (P 1, R 1)
    # -> P = 3/4, R = 1, F = 6/7 (the maximum; e.g. at 0.7 F = 0.75, at 0.2 F = 0.7368)
    pred = torch.tensor([[0.9, 0.1, 0.8], [0.2, 0.7, 0.3]])
    target = torch.tensor([[1.0, 0, 0], [0, 1, 1]])
    assert M.f1_max(pred, target).item() == pytest.approx(6 / 7, abs=1e-12)


def test_f1_max_tie_is_one_threshold():
    # both labels scored 0.5: at the only threshold P = 1/2, R = 1 -> F = 2/3, whatever the sort order
    # (TorchDrug gives 1 or 2/3 depending on which tied element its argsort puts first)
    assert M.f1_max(torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0, 0.0]])).item() == pytest.approx(2 / 3)
    assert M.f1_max(torch.tensor([[0.5, 0.5]]), torch.tensor([[0.0, 1.0]])).item() == pytest.approx(2 / 3)


def test_auprc_auroc_hand_computed():
    pred = torch.tensor([0.9, 0.8, 0.7, 0.6])
    target = torch.tensor([1.0, 0, 1, 0])
    assert M.area_under_prc(pred, target).item() == pytest.approx((1 + 2 / 3) / 2)
    assert M.area_under_roc(pred, target).item() == pytest.approx(3 / 4)
    # ties: positives 0.9, 0.5; negatives 0.5, 0.1 -> AP (1 + 2/3) / 2; AUROC (1 + 1 + 1/2 + 1) / 4
    pred = torch.tensor([0.9, 0.5, 0.5, 0.1])
    target = torch.tensor([1.0, 1, 0, 0])
    assert M.area_under_prc(pred, target).item() == pytest.approx((1 + 2 / 3) / 2)
    assert M.area_under_roc(pred, target).item() == pytest.approx(3.5 / 4)
    # the same tie with the negative listed first gives the same values
    pred = torch.tensor([0.9, 0.5, 0.5, 0.1])
    target = torch.tensor([1.0, 0, 1, 0])
    assert M.area_under_prc(pred, target).item() == pytest.approx((1 + 2 / 3) / 2)
    assert M.area_under_roc(pred, target).item() == pytest.approx(3.5 / 4)


def test_spearman_pearson_hand_computed():
    x = torch.tensor([1.0, 2, 2, 3])
    y = torch.tensor([1.0, 3, 2, 4])
    # ranks x = [1, 2.5, 2.5, 4], y = [1, 3, 2, 4]: centred dot 4.5, norms sqrt(4.5), sqrt(5)
    assert M.spearmanr(x, y).item() == pytest.approx(4.5 / math.sqrt(22.5))
    assert M.average_ranks(x).tolist() == [1, 2.5, 2.5, 4]
    # pearson of x, y: means 2, 2.5; centred [-1,0,0,1], [-1.5,.5,-.5,1.5] -> 3 / sqrt(2 * 5)
    assert M.pearsonr(x, y).item() == pytest.approx(3 / math.sqrt(10))


def test_regression_errors_and_accuracy_hand_computed():
    pred = torch.tensor([[1.0], [2.0], [4.0], [0.0]])
    target = torch.tensor([[2.0], [2.0], [1.0], [float("nan")]])
    assert M.mae(pred, target).item() == pytest.approx((1 + 0 + 3) / 3)
    assert M.rmse(pred, target).item() == pytest.approx(math.sqrt((1 + 0 + 9) / 3))
    logits = torch.tensor([[2.0, 1, 0], [0, 3, 1], [1, 1, 0], [0, 0, 5]])
    labels = torch.tensor([0, 2, 1, 2])
    # argmax [0, 1, 0 (tie -> lowest index), 2]: right for rows 0 and 3
    assert M.accuracy(logits, labels).item() == 0.5
    # per class: 0 -> TP1 FP1 FN0 F1 2/3; 1 -> TP0 FP1 FN1 F1 0; 2 -> TP1 FP0 FN1 F1 2/3
    assert M.macro_f1(logits, labels).item() == pytest.approx((2 / 3 + 0 + 2 / 3) / 3)


# --------------------------------------------------------------------- brute force, random + ties
@pytest.mark.parametrize("seed", range(6))
def test_against_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    B, T = 7 + seed, 11
    # integer-valued scores on a few levels: many ties within and across proteins
    levels = 4 if seed % 2 else 1000
    pred = torch.randint(0, levels, (B, T), generator=g).float() / levels
    target = (torch.rand(B, T, generator=g) < 0.3).float()
    target[0] = 0                          # a protein without any positive label
    if seed >= 3:
        target[torch.rand(B, T, generator=g) < 0.1] = float("nan")
    assert M.f1_max(pred, target).item() == pytest.approx(ref_fmax(pred.numpy(), target.numpy()), abs=1e-12)
    keep = ~torch.isnan(target.flatten())
    p, y = pred.flatten()[keep].numpy(), target.flatten()[keep].numpy()
    assert M.compute("auprc@micro", pred, target) == pytest.approx(ref_average_precision(p, y), abs=1e-12)
    assert M.compute("auroc@micro", pred, target) == pytest.approx(ref_auroc(p, y), abs=1e-12)
    x = torch.randint(0, levels, (40,), generator=g).float()
    z = x + torch.randint(0, 3, (40,), generator=g).float()
    assert M.spearmanr(x, z).item() == pytest.approx(ref_spearman(x.numpy(), z.numpy()), abs=1e-12)
    assert M.pearsonr(x, z).item() == pytest.approx(np.corrcoef(x.numpy(), z.numpy())[0, 1], abs=1e-12)


def test_ties_do_not_depend_on_order():
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 3, (6, 9), generator=g).float()
    target = (torch.rand(6, 9, generator=g) < 0.4).float()
    perm = torch.randperm(9, generator=g)
    assert M.f1_max(pred, target).item() == pytest.approx(M.f1_max(pred[:, perm], target[:, perm]).item(), abs=1e-12)
    flat = torch.randperm(54, generator=g)
    for name in ("auprc@micro", "auroc@micro"):
        a = M.compute(name, pred, target)
        b = M.compute(name, pred.flatten()[flat], target.flatten()[flat])
        assert a == pytest.approx(b, abs=1e-12)


def test_f1_max_ignores_missing_labels_like_removing_them():
    pred = torch.tensor([[0.9, 0.1, 0.8, 0.4], [0.2, 0.7, 0.3, 0.6]])
    target = torch.tensor([[1.0, 0, 0, float("nan")], [0, 1, 1, float("nan")]])
    assert M.f1_max(pred, target).item() == pytest.approx(6 / 7)   # the hand case with a 4th missing column
    # a protein with only missing labels does not count
    pred3 = torch.cat([pred, torch.tensor([[0.95, 0.0, 0.0, 0.0]])])
    target3 = torch.cat([target, torch.full((1, 4), float("nan"))])
    assert M.f1_max(pred3, target3).item() == pytest.approx(6 / 7)


def test_per_column_and_micro_dispatch():
    g = torch.Generator().manual_seed(3)
    pred = torch.randn(30, 3, generator=g)
    target = (torch.rand(30, 3, generator=g) < 0.5).float()
    per_col = np.mean([ref_auroc(pred[:, j].numpy(), target[:, j].numpy()) for j in range(3)])
    assert M.compute("auroc", pred, target) == pytest.approx(per_col, abs=1e-12)
    assert M.compute("auroc@macro", pred, target) == pytest.approx(per_col, abs=1e-12)
    assert M.compute("auroc@micro", pred, target) == pytest.approx(
        ref_auroc(pred.flatten().numpy(), target.flatten().numpy()), abs=1e-12)
    y = torch.randn(30, 1, generator=g)
    assert M.compute("spearmanr", pred[:, :1], y) == pytest.approx(
        ref_spearman(pred[:, 0].numpy(), y[:, 0].numpy()), abs=1e-12)


def test_low_precision_inputs_and_returns():
    pred = torch.tensor([[0.9, 0.1, 0.8], [0.2, 0.7, 0.3]], dtype=torch.bfloat16)
    target = torch.tensor([[1, 0, 0], [0, 1, 1]])                                  # int labels accepted
    value = M.f1_max(pred, target)
    assert value.dtype == torch.float64 and value.dim() == 0
    assert value.item() == pytest.approx(6 / 7)
    assert isinstance(M.compute("f1_max", pred, target), float)


# -------------------------------------------------------------------------------------- errors
def test_undefined_values_are_nan_with_warning():
    with pytest.warns(RuntimeWarning, match="one class"):
        assert math.isnan(M.area_under_roc(torch.tensor([0.1, 0.2]), torch.tensor([1.0, 1.0])).item())
    with pytest.warns(RuntimeWarning, match="no positive"):
        assert math.isnan(M.area_under_prc(torch.tensor([0.1, 0.2]), torch.tensor([0.0, 0.0])).item())
    with pytest.warns(RuntimeWarning, match="constant"):
        assert math.isnan(M.spearmanr(torch.ones(4), torch.arange(4.0)).item())


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown metric 'f1'"):
        M.compute("f1", torch.zeros(2, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="shape"):
        M.f1_max(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="2-D"):
        M.f1_max(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="0 or 1"):
        M.area_under_roc(torch.zeros(3), torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="NaN"):
        M.area_under_prc(torch.tensor([float("nan"), 0.0]), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="no labelled"):
        M.spearmanr(torch.zeros(2), torch.full((2,), float("nan")))
    with pytest.raises(ValueError, match="class indices"):
        M.accuracy(torch.zeros(3, 4), torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        M.accuracy(torch.zeros(3), torch.tensor([0, 1, 1]))


# ---------------------------------------------------------------- optional peer cross-checks
def test_against_sklearn_and_scipy_when_installed():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(7)
    for levels in (5, 10000):
        pred = torch.randint(0, levels, (300,), generator=g).float()
        target = (torch.rand(300, generator=g) < 0.3).float()
        assert M.area_under_prc(pred, target).item() == pytest.approx(
            sklearn_metrics.average_precision_score(target.numpy(), pred.numpy()), abs=1e-12)
        assert M.area_under_roc(pred, target).item() == pytest.approx(
            sklearn_metrics.roc_auc_score(target.numpy(), pred.numpy()), abs=1e-12)
        z = pred + torch.randint(0, levels, (300,), generator=g).float()
        assert M.spearmanr(pred, z).item() == pytest.approx(stats.spearmanr(pred.double().numpy(), z.double().numpy())[0], abs=1e-12)
        assert M.pearsonr(pred, z).item() == pytest.approx(stats.pearsonr(pred.double().numpy(), z.double().numpy())[0], abs=1e-12)
    logits = torch.randn(200, 5, generator=g)
    labels = torch.randint(0, 5, (200,), generator=g)
    assert M.macro_f1(logits, labels).item() == pytest.approx(
        sklearn_metrics.f1_score(labels.numpy(), logits.argmax(1).numpy(), average="macro"), abs=1e-12)


def test_against_torchdrug_without_ties_when_installed():
    td = pytest.importorskip("torchdrug.metrics")
    g = torch.Generator().manual_seed(11)
    pred = torch.randn(20, 50, generator=g)                  # continuous scores: no ties
    target = (torch.rand(20, 50, generator=g) < 0.2).float()
    assert M.f1_max(pred, target).item() == pytest.approx(td.f1_max(pred, target).item(), abs=1e-5)
    assert M.compute("auprc@micro", pred, target) == pytest.approx(
        td.area_under_prc(pred.flatten(), target.long().flatten()).item(), abs=1e-5)
    assert M.compute("auroc@micro", pred, target) == pytest.approx(
        td.area_under_roc(pred.flatten(), target.long().flatten()).item(), abs=1e-5)
    x, y = torch.randn(100, generator=g), torch.randn(100, generator=g)
    assert M.spearmanr(x, y).item() == pytest.approx(td.spearmanr(x, y).item(), abs=1e-5)
    assert M.pearsonr(x, y).item() == pytest.approx(td.pearsonr(x, y).item(), abs=1e-5)
