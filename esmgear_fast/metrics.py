"""Evaluation metrics with TorchDrug's definitions, computed once over a whole evaluation set.

Every function takes tensors already gathered from all ranks (the engine gathers across DDP ranks),
on any device, and returns a 0-dim ``float64`` tensor on that device. :func:`compute` is the dispatcher
for the metric names used in configs and returns a Python ``float``.

Definitions follow TorchDrug 0.2.1 (``torchdrug.metrics``) and its tasks' ``evaluate``:

* :func:`f1_max`: protein-centric maximum F-score (CAFA's Fmax) of a ``[B, T]`` score matrix: at a
  threshold ``t`` a protein's precision is over its labels scored ``>= t`` and its recall over its true
  labels; precision is averaged over the proteins with at least one label scored ``>= t``, recall
  over all proteins; the maximum of ``2PR / (P + R)`` over the thresholds is returned.
* :func:`area_under_prc`: average precision, ``mean over positives of precision at their rank``.
* :func:`area_under_roc`: the probability that a random positive scores above a random negative.
* :func:`spearmanr`: Pearson correlation of average ranks; :func:`pearsonr`; :func:`mae`;
  :func:`rmse`; :func:`accuracy` (argmax of ``[N, C]`` scores); :func:`macro_f1`.

Ties. TorchDrug walks its thresholds one sorted element at a time, so with tied scores its F1-max,
AUPRC and AUROC depend on the order an unstable ``argsort`` leaves tied elements in (and may differ
between CPU and GPU). Here **tied scores are one threshold**: all elements with the same score are
predicted positive together. Without ties the results are TorchDrug's; with ties they are the
order-independent values (F1-max at the distinct scores; AUPRC = scikit-learn's
``average_precision_score``; AUROC = scikit-learn's ``roc_auc_score``, i.e. a tied positive/negative
pair counts one half). Spearman's ranks of tied values are their average rank, as in TorchDrug and
SciPy.

Missing labels. NaN targets are left out (TorchDrug's regression tasks do the same; its multi-label
metrics have no missing labels). In :func:`f1_max` a NaN entry is neither predicted nor true, and a
protein with no label at all is not counted.

Undefined values. Where a metric is undefined (AUROC with one class only, AUPRC without positives,
a correlation of a constant), TorchDrug's ``+ 1e-10`` terms return 0; here the result is NaN and a
:class:`RuntimeWarning` says why. Sums run in float64.
"""
from __future__ import annotations

import warnings
from typing import Callable, Dict, Tuple

import torch

__all__ = [
    "METRICS", "MINIMIZED", "accuracy", "area_under_prc", "area_under_roc", "compute", "f1_max",
    "macro_f1", "mae", "pearsonr", "rmse", "spearmanr", "average_ranks",
]


# ----------------------------------------------------------------------------------------- checks
def _as_tensor(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x.detach()


def _pair(pred, target, fn: str, ndim: Tuple[int, ...] = (1,),
          score_dtype: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Checked (pred, target): target float64; pred float64, or with ``score_dtype`` (scores that are
    only compared) float32 unless already float64 (half-precision values are exact in float32)."""
    pred = _as_tensor(pred, f"{fn}(): pred")
    target = _as_tensor(target, f"{fn}(): target")
    if pred.shape != target.shape:
        raise ValueError(f"{fn}(): pred has shape {tuple(pred.shape)} but target has shape {tuple(target.shape)}")
    if pred.dim() not in ndim:
        raise ValueError(f"{fn}(): expected {' or '.join(f'{d}-D' for d in ndim)} tensors, got shape "
                         f"{tuple(pred.shape)}")
    if pred.device != target.device:
        raise ValueError(f"{fn}(): pred is on {pred.device} but target is on {target.device}")
    if pred.is_complex() or pred.dtype == torch.bool:
        raise TypeError(f"{fn}(): pred must hold real scores, got dtype {pred.dtype}")
    if score_dtype and pred.dtype != torch.float64:
        return pred.to(torch.float32), target.to(torch.float64)
    return pred.to(torch.float64), target.to(torch.float64)


def _check_scores(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, fn: str) -> None:
    """No NaN score at a labelled entry, 0/1 labels, at least one labelled entry (without copies)."""
    if not bool(valid.any()):
        raise ValueError(f"{fn}(): no labelled element (empty input or every target is NaN)")
    if bool((torch.isnan(pred) & valid).any()):
        raise ValueError(f"{fn}(): pred contains NaN at a labelled element")
    bad = valid & (target != 0) & (target != 1)
    if bool(bad.any()):
        raise ValueError(f"{fn}(): targets must be 0 or 1 (NaN = missing), found e.g. {target[bad][:5].tolist()}")


def _labelled(pred: torch.Tensor, target: torch.Tensor, fn: str, binary: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """1-D pred/target with NaN targets removed; checks NaN scores and 0/1 targets."""
    keep = ~torch.isnan(target)
    pred, target = pred[keep], target[keep]
    if pred.numel() == 0:
        raise ValueError(f"{fn}(): no labelled element (empty input or every target is NaN)")
    if torch.isnan(pred).any():
        raise ValueError(f"{fn}(): pred contains NaN at a labelled element")
    if binary and not ((target == 0) | (target == 1)).all():
        bad = target[(target != 0) & (target != 1)][:5].tolist()
        raise ValueError(f"{fn}(): targets must be 0 or 1 (NaN = missing), found e.g. {bad}")
    return pred, target


def _undefined(fn: str, why: str, device) -> torch.Tensor:
    warnings.warn(f"{fn}() is undefined: {why}; returning NaN", RuntimeWarning, stacklevel=3)
    return torch.tensor(float("nan"), dtype=torch.float64, device=device)


def _group_ends(sorted_scores: torch.Tensor) -> torch.Tensor:
    """Bool mask of the last element of every run of equal values in a sorted 1-D tensor."""
    end = torch.ones_like(sorted_scores, dtype=torch.bool)
    end[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    return end


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of a 1-D tensor (ascending); tied values get the mean of their ranks (float64)."""
    x = _as_tensor(x, "average_ranks(): x")
    if x.dim() != 1:
        raise ValueError(f"average_ranks(): expected a 1-D tensor, got shape {tuple(x.shape)}")
    values, order = torch.sort(x)
    start = torch.ones_like(values, dtype=torch.bool)
    start[1:] = values[1:] != values[:-1]
    group = torch.cumsum(start.long(), 0) - 1
    counts = torch.bincount(group).to(torch.float64)
    first = torch.cumsum(counts, 0) - counts                       # 0-based first position of each group
    mean_rank = first + (counts + 1) / 2                           # mean of ranks first+1 .. first+count
    ranks = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    ranks[order] = mean_rank[group]
    return ranks


# ---------------------------------------------------------------------------------- classification
def f1_max(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Protein-centric maximum F-score over all thresholds (TorchDrug's ``f1_max``; CAFA's Fmax).

    Args:
        pred: ``[B, T]`` scores (logits or probabilities: only their order matters).
        target: ``[B, T]`` 0/1 labels, NaN = missing (that entry is ignored).

    The thresholds are the distinct predicted scores. At threshold ``t`` protein ``b`` predicts the
    labels scored ``>= t``; its precision is (true among them) / (their number), its recall (true among
    them) / (its true labels, recall 0 when it has none). ``P(t)`` averages precision over proteins
    predicting at least one label, ``R(t)`` averages recall over all proteins with a label; the result
    is ``max_t 2 P R / (P + R)``. Tied scores form one threshold (TorchDrug evaluates inside a tie
    too, in ``argsort`` order); without ties the two agree. Runs in ``O(BT log BT)`` on the input's device.
    """
    pred, target = _pair(pred, target, "f1_max", ndim=(2,), score_dtype=True)
    valid = ~torch.isnan(target)
    _check_scores(pred, target, valid, "f1_max")
    label = torch.where(valid, target, torch.zeros_like(target))
    num_proteins = int(valid.any(dim=1).sum())

    # Per protein, labels by decreasing score: running precision / recall over the labelled entries
    # (a missing label adds to neither count), and each entry's change of its protein's precision
    # and recall when the threshold passes it.
    order = torch.argsort(pred, dim=1, descending=True)
    score = pred.gather(1, order)
    v = valid.gather(1, order)
    k = torch.cumsum(v, 1, dtype=torch.float64)
    true_pos = torch.cumsum(label.gather(1, order), 1)
    num_true = true_pos[:, -1:]
    precision = true_pos / k.clamp_min(1)
    recall = torch.where(num_true > 0, true_pos / num_true.clamp_min(1), torch.zeros_like(true_pos))
    d_precision = torch.diff(precision, dim=1, prepend=torch.zeros_like(precision[:, :1]))[v]
    d_recall = torch.diff(recall, dim=1, prepend=torch.zeros_like(recall[:, :1]))[v]
    first = (k == 1)[v]
    score = score[v]

    # All labelled entries by decreasing score; at the end of each group of equal scores every entry
    # >= t has been passed, so the sums are order-independent there (a prefix of each protein's list).
    glob = torch.argsort(score, descending=True)
    score = score[glob]
    sum_precision = torch.cumsum(d_precision[glob], 0)
    sum_recall = torch.cumsum(d_recall[glob], 0)
    started = torch.cumsum(first[glob], 0, dtype=torch.float64)
    end = _group_ends(score)
    p = sum_precision[end] / started[end]
    r = sum_recall[end] / num_proteins
    f1 = torch.where(p + r > 0, 2 * p * r / (p + r).clamp_min(1e-300), torch.zeros_like(p))
    return f1.max()


def area_under_prc(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Area under the precision-recall curve as average precision (TorchDrug's ``area_under_prc``).

    ``pred`` and ``target`` are 1-D (flatten first for ``auprc@micro``); NaN targets are ignored.
    Each positive contributes the precision at its rank; tied scores are one threshold, i.e. every
    positive of a tie group gets the precision at the end of the group (scikit-learn's
    ``average_precision_score``). NaN (with a warning) when there is no positive.
    """
    pred, target = _pair(pred, target, "area_under_prc", score_dtype=True)
    score, label = _labelled(pred, target, "area_under_prc", binary=True)
    num_pos = label.sum()
    if num_pos == 0:
        return _undefined("area_under_prc", "no positive target", score.device)
    order = torch.argsort(score, descending=True)
    score, label = score[order], label[order]
    end = _group_ends(score)
    true_pos = torch.cumsum(label, 0)[end]
    seen = (torch.nonzero(end).squeeze(1) + 1).to(torch.float64)
    new_pos = torch.diff(true_pos, prepend=true_pos.new_zeros(1))
    return (new_pos * true_pos / seen).sum() / num_pos


def area_under_roc(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Area under the ROC curve (TorchDrug's ``area_under_roc``): P(score of a positive > of a negative).

    1-D inputs (flatten first for ``auroc@micro``); NaN targets are ignored. A tied positive/negative
    pair counts 1/2 (trapezoidal ROC, scikit-learn's ``roc_auc_score``); computed from average ranks
    (Mann-Whitney U). NaN (with a warning) when only one class is present.
    """
    pred, target = _pair(pred, target, "area_under_roc", score_dtype=True)
    score, label = _labelled(pred, target, "area_under_roc", binary=True)
    num_pos = label.sum()
    num_neg = label.numel() - num_pos
    if num_pos == 0 or num_neg == 0:
        return _undefined("area_under_roc", "only one class in the targets", score.device)
    ranks = average_ranks(score)
    return ((ranks * label).sum() - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg)


def accuracy(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose highest score is the target class (TorchDrug's ``accuracy``).

    ``pred`` ``[N, C]`` scores, ``target`` ``[N]`` (or ``[N, 1]``) class indices. Ties in a row go to
    the lowest class index (``torch.argmax``).
    """
    pred, target = _class_inputs(pred, target, "accuracy")
    return (pred.argmax(dim=-1) == target).to(torch.float64).mean()


def macro_f1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Unweighted mean over classes of the per-class F1 of the argmax predictions.

    Classes present in the targets or the predictions count (scikit-learn's ``f1_score(average="macro")``).
    """
    pred, target = _class_inputs(pred, target, "macro_f1")
    num_class = pred.shape[1]
    guess = pred.argmax(dim=-1)
    tp = torch.bincount(target[guess == target], minlength=num_class).to(torch.float64)
    n_pred = torch.bincount(guess, minlength=num_class).to(torch.float64)
    n_true = torch.bincount(target, minlength=num_class).to(torch.float64)
    present = (n_pred + n_true) > 0
    f1 = 2 * tp[present] / (n_pred[present] + n_true[present])
    return f1.mean()


def _class_inputs(pred, target, fn: str) -> Tuple[torch.Tensor, torch.Tensor]:
    pred = _as_tensor(pred, f"{fn}(): pred")
    target = _as_tensor(target, f"{fn}(): target")
    if target.dim() == 2 and target.shape[1] == 1:
        target = target.squeeze(1)
    if pred.dim() != 2 or pred.shape[1] < 2:
        raise ValueError(f"{fn}(): pred must be [N, C] class scores with C >= 2, got shape {tuple(pred.shape)}")
    if target.dim() != 1 or target.shape[0] != pred.shape[0]:
        raise ValueError(f"{fn}(): target must be [N] class indices with N = {pred.shape[0]}, "
                         f"got shape {tuple(target.shape)}")
    if pred.shape[0] == 0:
        raise ValueError(f"{fn}(): empty input")
    if target.is_floating_point():
        if torch.isnan(target).any() or (target != target.round()).any():
            raise ValueError(f"{fn}(): target must hold integer class indices")
    target = target.long()
    if (target < 0).any() or (target >= pred.shape[1]).any():
        raise ValueError(f"{fn}(): target class indices must lie in [0, {pred.shape[1]}), got range "
                         f"[{int(target.min())}, {int(target.max())}]")
    return pred, target


# -------------------------------------------------------------------------------------- regression
def pearsonr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of two 1-D tensors (NaN targets ignored); NaN with a warning if one is constant."""
    pred, target = _pair(pred, target, "pearsonr")
    x, y = _labelled(pred, target, "pearsonr", binary=False)
    return _pearson(x, y, "pearsonr")


def spearmanr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation: Pearson correlation of the average ranks (ties share their mean rank).

    1-D inputs, NaN targets ignored; global over the set (ESM-GearNet reports PSR's global Spearman).
    """
    pred, target = _pair(pred, target, "spearmanr")
    x, y = _labelled(pred, target, "spearmanr", binary=False)
    return _pearson(average_ranks(x), average_ranks(y), "spearmanr")


def _pearson(x: torch.Tensor, y: torch.Tensor, fn: str) -> torch.Tensor:
    xc, yc = x - x.mean(), y - y.mean()
    nx, ny = xc.norm(), yc.norm()
    if nx == 0 or ny == 0:
        return _undefined(fn, "pred or target is constant", x.device)
    return (xc @ yc) / (nx * ny)


def mae(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the labelled (non-NaN target) elements."""
    pred, target = _pair(pred, target, "mae", ndim=(1, 2))
    x, y = _labelled(pred.flatten(), target.flatten(), "mae", binary=False)
    return (x - y).abs().mean()


def rmse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Root mean squared error over the labelled (non-NaN target) elements."""
    pred, target = _pair(pred, target, "rmse", ndim=(1, 2))
    x, y = _labelled(pred.flatten(), target.flatten(), "rmse", binary=False)
    return ((x - y) ** 2).mean().sqrt()


# -------------------------------------------------------------------------------------- dispatcher
def _columns(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    """Per-column metric of ``[N, T]`` inputs (TorchDrug's per-task values), averaged over columns."""
    def per_column(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.dim() == 2 and pred.shape == target.shape:
            return torch.stack([fn(pred[:, j], target[:, j]) for j in range(pred.shape[1])]).mean()
        return fn(pred, target)
    return per_column


def _micro(fn):
    def flat(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"pred has shape {tuple(pred.shape)} but target has shape {tuple(target.shape)}")
        return fn(pred.flatten(), target.flatten())
    return flat


#: config name -> function of (pred, target). Multi-column inputs: ``@micro`` flattens; the plain
#: names (and ``@macro``) average TorchDrug's per-column values.
METRICS: Dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "f1_max": f1_max,
    "auprc@micro": _micro(area_under_prc),
    "auroc@micro": _micro(area_under_roc),
    "auprc@macro": _columns(area_under_prc),
    "auroc@macro": _columns(area_under_roc),
    "auprc": _columns(area_under_prc),
    "auroc": _columns(area_under_roc),
    "spearmanr": _columns(spearmanr),
    "pearsonr": _columns(pearsonr),
    "mae": _columns(mae),
    "rmse": _columns(rmse),
    "accuracy": accuracy,
    "macro_f1": macro_f1,
}

#: metrics where lower is better (model selection mode "min"); every other metric is maximised.
MINIMIZED = frozenset({"mae", "rmse"})


def compute(name: str, pred: torch.Tensor, target: torch.Tensor) -> float:
    """The metric ``name`` (a key of :data:`METRICS`) of a whole evaluation set, as a Python float."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; known metrics: {', '.join(sorted(METRICS))}")
    return float(METRICS[name](pred, target))
