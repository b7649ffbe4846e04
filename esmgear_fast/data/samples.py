"""Dataset samples (dicts) and how they are batched: :func:`collate_samples` and :func:`move_to`.

Every dataset of :mod:`esmgear_fast.data.datasets` returns dict samples:

* single-protein tasks: ``{"protein": Protein, "target": Tensor}``;
* mutation pairs (MSP): ``{"wild_type": Protein, "mutant": Protein, "target": Tensor}``;
* unlabelled data (pre-training, embedding): ``{"protein": Protein}``.

Targets per sample: multi-label ``float32 [T]`` of 0/1 (NaN = missing label); regression ``float32 [T]``;
binary ``float32 [1]``; multi-class ``int64 []`` (the class index). A sample may also carry ``"name"``.

:func:`collate_samples` packs a list of samples into ``{"protein": ProteinBatch, "target": Tensor[B, ...],
"names": [...]}`` (or ``"wild_type"``/``"mutant"`` batches for pairs); use it as a ``DataLoader``'s
``collate_fn``. :func:`move_to` moves every tensor / batch of such a dict to a device.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch

from ..io.protein import Protein
from .batch import ProteinBatch, collate

__all__ = ["PROTEIN_KEYS", "collate_samples", "move_to"]

#: sample keys holding a :class:`Protein` (packed into a :class:`ProteinBatch` each)
PROTEIN_KEYS = ("protein", "wild_type", "mutant")


def collate_samples(samples: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Packs dict samples into one batch dict (``DataLoader(collate_fn=collate_samples)``).

    * every :class:`Protein` key (``protein``, ``wild_type``, ``mutant``) -> a packed :class:`ProteinBatch`;
    * ``target`` -> ``torch.stack`` of the per-sample targets (``[B, T]`` float, or ``[B]`` int64 for
      multi-class); every sample must have a target of the same shape and dtype, or none has one;
    * ``names`` -> the sample names: the sample's ``"name"`` if present, else the name of its
      ``protein`` (or ``wild_type``) entry;
    * other tensor keys are stacked, other keys become lists.

    Raises :class:`ValueError` (naming the sample index and key) for an empty list, samples with
    different keys, or targets of different shapes or dtypes; :class:`TypeError` for non-dict samples.
    """
    samples = list(samples)
    if not samples:
        raise ValueError("collate_samples() needs at least one sample, got an empty list")
    for i, s in enumerate(samples):
        if not isinstance(s, dict):
            raise TypeError(f"collate_samples(): sample {i} is a {type(s).__name__}, not a dict")
    keys = set(samples[0])
    for i, s in enumerate(samples):
        if set(s) != keys:
            raise ValueError(f"collate_samples(): sample {i} has keys {sorted(s)}, sample 0 has {sorted(keys)}")
    if not keys & set(PROTEIN_KEYS):
        raise ValueError(f"collate_samples(): samples hold no protein (expected one of {PROTEIN_KEYS}), "
                         f"keys are {sorted(keys)}")

    out: Dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key in PROTEIN_KEYS:
            for i, v in enumerate(values):
                if not isinstance(v, Protein):
                    raise TypeError(f"collate_samples(): sample {i} key {key!r} is a {type(v).__name__}, "
                                    f"not a Protein")
            out[key] = collate(values)
        elif key == "name":
            continue
        elif isinstance(values[0], torch.Tensor):
            out[key] = _stack(values, key)
        else:
            out[key] = values
    if "name" in keys:
        names = [str(s["name"]) for s in samples]
    else:
        first = "protein" if "protein" in keys else next(k for k in PROTEIN_KEYS if k in keys)
        names = list(out[first].names)
    out["names"] = names
    return out


def _stack(values: List[Any], key: str) -> torch.Tensor:
    ref = values[0]
    for i, v in enumerate(values):
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"collate_samples(): sample {i} key {key!r} is a {type(v).__name__}, "
                            f"sample 0's is a Tensor")
        if v.shape != ref.shape or v.dtype != ref.dtype:
            raise ValueError(f"collate_samples(): sample {i} key {key!r} has shape {tuple(v.shape)} "
                             f"dtype {v.dtype}, sample 0 has shape {tuple(ref.shape)} dtype {ref.dtype}")
    return torch.stack(values)


def move_to(inputs: Any, device, non_blocking: bool = False) -> Any:
    """``inputs`` with every tensor, :class:`ProteinBatch` and :class:`Protein` moved to ``device``.

    Dicts, lists and tuples are rebuilt recursively (same keys and order); anything else (strings,
    numbers, ``None``) is returned unchanged.
    """
    if isinstance(inputs, (torch.Tensor, ProteinBatch, Protein)):
        return inputs.to(device, non_blocking=non_blocking)
    if isinstance(inputs, dict):
        return {k: move_to(v, device, non_blocking) for k, v in inputs.items()}
    if isinstance(inputs, list):
        return [move_to(v, device, non_blocking) for v in inputs]
    if isinstance(inputs, tuple):
        return tuple(move_to(v, device, non_blocking) for v in inputs)
    return inputs
