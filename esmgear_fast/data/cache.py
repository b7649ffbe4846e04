"""A compact on-disk cache of parsed proteins: :func:`write_cache` and the :class:`ProteinCache` dataset.

File format (one file written with ``torch.save``; read with ``torch.load(weights_only=True)``, so no
arbitrary object is ever unpickled): a dict holding only tensors, strings, ints and lists of strings.

=====================  ==============================  ==================================================
key                    type                            meaning
=====================  ==============================  ==================================================
``format``             str                             ``"esmgear_fast.protein_cache"``
``version``            int                             1
``names``              list[str] (B)                   protein names
``sources``            list[str] (B)                   source file of each protein (relative to SRC_DIR)
``ptr``                int64 [B+1]                     residue offsets
``sequence``           str (N)                         all one-letter sequences, concatenated
``insertion_code``     str (N)                         all insertion codes, concatenated
``backbone``           float32 [N, 4, 3]               N, CA, C, O (NaN where missing); pos = CA
``chain_id``           int32 [N]                       per-protein chain index
``residue_number``     int32 [N]                       author residue numbers
``plddt``              float32 [N] or None             NaN for proteins without pLDDT
``has_plddt``          bool [B]
``chain_ptr``          int64 [B+1]                     offsets into ``chain_names``
``chain_names``        list[str]                       all chain names, concatenated per protein
``num_skipped``        int64 [B]                       ``num_skipped_residues``
=====================  ==============================  ==================================================
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..io.protein import Protein
from ..io.residues import sequence_to_residue_type
from .batch import ProteinBatch, collate

__all__ = ["CACHE_FORMAT", "CACHE_VERSION", "ProteinCache", "write_cache"]

CACHE_FORMAT = "esmgear_fast.protein_cache"
CACHE_VERSION = 1


def write_cache(entries: Sequence[dict], path: Union[str, os.PathLike],
                sources: Optional[Sequence[str]] = None) -> Path:
    """Writes protein arrays (dicts from :func:`esmgear_fast.io.read_structure_arrays`) to ``path``.

    The file is written to a temporary name first and then renamed, so a crash never leaves a
    half-written cache behind. Returns the path.
    """
    path = Path(path)
    entries = list(entries)
    if sources is None:
        sources = ["" for _ in entries]
    if len(sources) != len(entries):
        raise ValueError(f"{len(sources)} sources for {len(entries)} entries")
    lengths = np.array([len(e["sequence"]) for e in entries], dtype=np.int64)
    ptr = np.zeros(len(entries) + 1, dtype=np.int64)
    np.cumsum(lengths, out=ptr[1:])
    n = int(ptr[-1])

    def cat(key, dtype, shape):
        if not entries:
            return torch.from_numpy(np.zeros((0,) + shape, dtype=dtype))
        return torch.from_numpy(np.concatenate([np.asarray(e[key], dtype=dtype) for e in entries]))

    has_plddt = [e.get("plddt") is not None for e in entries]
    if any(has_plddt):
        plddt = torch.from_numpy(np.concatenate([
            np.asarray(e["plddt"], dtype=np.float32) if e.get("plddt") is not None
            else np.full(len(e["sequence"]), np.nan, dtype=np.float32) for e in entries]))
    else:
        plddt = None
    chain_counts = np.array([len(e["chain_names"]) for e in entries], dtype=np.int64)
    chain_ptr = np.zeros(len(entries) + 1, dtype=np.int64)
    np.cumsum(chain_counts, out=chain_ptr[1:])
    int32 = np.iinfo(np.int32)
    for e in entries:
        numbers = np.asarray(e["residue_number"])
        if numbers.size and (numbers.min() < int32.min or numbers.max() > int32.max):
            raise ValueError(f"{e['name']}: residue number does not fit in int32")

    data = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "names": [str(e["name"]) for e in entries],
        "sources": [str(s) for s in sources],
        "ptr": torch.from_numpy(ptr),
        "sequence": "".join(e["sequence"] for e in entries),
        "insertion_code": "".join(e["insertion_code"] for e in entries),
        "backbone": cat("backbone", np.float32, (4, 3)),
        "chain_id": cat("chain_id", np.int32, ()),
        "residue_number": cat("residue_number", np.int32, ()),
        "plddt": plddt,
        "has_plddt": torch.tensor(has_plddt, dtype=torch.bool),
        "chain_ptr": torch.from_numpy(chain_ptr),
        "chain_names": [c for e in entries for c in e["chain_names"]],
        "num_skipped": torch.tensor([int(e["num_skipped_residues"]) for e in entries], dtype=torch.long),
    }
    if data["backbone"].shape[0] != n or len(data["sequence"]) != n or len(data["insertion_code"]) != n:
        raise ValueError("inconsistent entries: sequence, insertion_code and backbone lengths differ")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        torch.save(data, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


class ProteinCache(Dataset):
    """A map-style dataset over a cache written by :func:`write_cache` / ``python -m esmgear_fast.data.prepare``.

    ``cache[i]`` is a :class:`Protein` (fresh tensors, safe to modify); ``len(cache)`` the number of
    proteins. Use ``DataLoader(cache, batch_size=..., collate_fn=ProteinCache.collate)`` (or
    :func:`esmgear_fast.data.collate`) for packed batches, or :meth:`get_batch` to batch indices directly.

    Args:
        path: the cache file.
        mmap: memory-map the tensors instead of reading them into memory (default ``True``; fast to open,
            and pages are shared between DataLoader worker processes).

    The file is loaded with ``torch.load(weights_only=True)``; a file that is not a cache of this
    format/version raises :class:`ValueError`. When pickled (e.g. into spawned DataLoader workers) only
    the path is sent; the worker reopens the file.
    """

    collate = staticmethod(collate)

    def __init__(self, path: Union[str, os.PathLike], mmap: bool = True):
        self.path = Path(path)
        self.mmap = bool(mmap)
        self._load()

    def _load(self) -> None:
        if not self.path.is_file():
            raise FileNotFoundError(f"protein cache {self.path} does not exist")
        try:
            data = torch.load(self.path, map_location="cpu", weights_only=True, mmap=self.mmap)
        except Exception as exc:
            raise ValueError(f"{self.path}: not a readable protein cache ({type(exc).__name__}: {exc})") from exc
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
            raise ValueError(f"{self.path}: not an esmgear_fast protein cache")
        if data.get("version") != CACHE_VERSION:
            raise ValueError(f"{self.path}: cache version {data.get('version')} is not supported "
                             f"(expected {CACHE_VERSION}); rebuild it with esmgear_fast.data.prepare")
        self._data = data
        self.names: List[str] = data["names"]
        self.sources: List[str] = data["sources"]
        self._ptr: List[int] = data["ptr"].tolist()
        self._chain_ptr: List[int] = data["chain_ptr"].tolist()
        self._has_plddt: List[bool] = data["has_plddt"].tolist()
        self._num_skipped: List[int] = data["num_skipped"].tolist()

    def __getstate__(self):
        return {"path": self.path, "mmap": self.mmap}

    def __setstate__(self, state):
        self.path = state["path"]
        self.mmap = state["mmap"]
        self._load()

    def __len__(self) -> int:
        return len(self.names)

    @property
    def lengths(self) -> torch.Tensor:
        """``int64 [B]`` number of residues of every protein (e.g. for length-bucketed sampling)."""
        return self._data["ptr"].diff()

    @property
    def num_residues(self) -> int:
        """Total number of residues in the cache."""
        return self._ptr[-1]

    def __getitem__(self, index: int) -> Protein:
        index = int(index)
        B = len(self.names)
        if not -B <= index < B:
            raise IndexError(f"index {index} out of range for a cache of {B} proteins")
        index %= B
        d = self._data
        start, end = self._ptr[index], self._ptr[index + 1]
        sequence = d["sequence"][start:end]
        backbone = d["backbone"][start:end].clone()
        return Protein(
            name=self.names[index],
            sequence=sequence,
            residue_type=sequence_to_residue_type(sequence),
            pos=backbone[:, 1].clone(),
            backbone=backbone,
            chain_id=d["chain_id"][start:end].long(),
            chain_names=list(d["chain_names"][self._chain_ptr[index]:self._chain_ptr[index + 1]]),
            residue_number=d["residue_number"][start:end].long(),
            insertion_code=d["insertion_code"][start:end],
            plddt=d["plddt"][start:end].clone() if self._has_plddt[index] else None,
            num_skipped_residues=self._num_skipped[index],
        )

    def get_batch(self, indices: Sequence[int]) -> ProteinBatch:
        """``collate([self[i] for i in indices])``."""
        return collate([self[int(i)] for i in indices])

    def __repr__(self) -> str:
        return f"ProteinCache({str(self.path)!r}, proteins={len(self)}, residues={self.num_residues})"
