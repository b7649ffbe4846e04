"""Shared machinery of the datasets: cached protein storage, targets, subsets and splits.

:class:`ProteinDataset` is the base of every single-protein dataset (EC, GO, your own structures). It holds

* one or more memory-mapped :class:`~esmgear_fast.data.ProteinCache` files and, per item, which cache
  entry it is (and optionally which chain of it);
* the targets, either dense (``[N, T]`` float32 or ``[N]`` int64) or as lists of positive-label indices
  (multi-label data with thousands of terms, densified per item);
* the split of every item (0 train, 1 valid, 2 test).

It exposes the dataset interface shared by every dataset of the package: ``len``, ``__getitem__`` (a dict
sample ``{"protein": Protein, "target": Tensor}`` after ``transform``), ``split()``, ``subset(indices)``,
``lengths``, ``tasks``, ``task_type``, ``names``, ``split_names``.

Structures are parsed once, in parallel worker processes, by :func:`parse_members_to_cache` (members of
zip archives or plain files) and reloaded from the cache afterwards.
"""
from __future__ import annotations

import copy
import gzip
import json
import multiprocessing
import os
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..cache import ProteinCache, write_cache

__all__ = ["ParseResult", "ProteinDataset", "SPLITS", "TASK_TYPES", "parse_members_to_cache"]

SPLITS = ("train", "valid", "test")
TASK_TYPES = ("multilabel", "regression", "binary", "multiclass")


class ProteinDataset(Dataset):
    """Base class: see the module docstring. Subclasses fill the fields through :meth:`_init_storage`."""

    task_type: str = "multilabel"

    def _init_storage(self, *, caches: Sequence[ProteinCache], entry: np.ndarray, names: Sequence[str],
                      split_ids: np.ndarray, tasks: Sequence[str], task_type: str,
                      dense_targets: Optional[torch.Tensor] = None,
                      positive_targets: Optional[List[Sequence[int]]] = None,
                      chains: Optional[Sequence[Optional[str]]] = None,
                      lengths: Optional[torch.Tensor] = None,
                      transform: Optional[Callable] = None) -> None:
        if task_type not in TASK_TYPES:
            raise ValueError(f"task_type must be one of {TASK_TYPES}, got {task_type!r}")
        self._caches = list(caches)
        self._entry = np.asarray(entry, dtype=np.int64).reshape(-1, 2)
        n = len(self._entry)
        self.names: List[str] = list(names)
        self._split_ids = np.asarray(split_ids, dtype=np.int8).reshape(-1)
        self.tasks: List[str] = list(tasks)
        self.task_type = task_type
        self._dense = dense_targets
        self._positive = positive_targets
        self._chains = None if chains is None else list(chains)
        self.transform = transform
        if lengths is None:
            lengths = torch.zeros(n, dtype=torch.long)
            for c, cache in enumerate(self._caches):
                sel = np.nonzero(self._entry[:, 0] == c)[0]
                if sel.size:
                    lengths[torch.from_numpy(sel)] = cache.lengths[torch.from_numpy(self._entry[sel, 1])]
        self._lengths = lengths.to(torch.long)
        sizes = {"names": len(self.names), "split_ids": len(self._split_ids), "lengths": len(self._lengths)}
        if dense_targets is not None:
            sizes["targets"] = len(dense_targets)
        if positive_targets is not None:
            sizes["targets"] = len(positive_targets)
        if self._chains is not None:
            sizes["chains"] = len(self._chains)
        bad = {k: v for k, v in sizes.items() if v != n}
        if bad:
            raise ValueError(f"{type(self).__name__}: {n} entries but {bad}")

    # ------------------------------------------------------------------ interface
    def __len__(self) -> int:
        return len(self._entry)

    @property
    def lengths(self) -> torch.Tensor:
        """``int64 [N]`` residues per item (before any transform), for length-aware batching."""
        return self._lengths

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def split_names(self) -> List[str]:
        """The split (``"train"``, ``"valid"`` or ``"test"``) of every item."""
        return [SPLITS[i] for i in self._split_ids.tolist()]

    @property
    def num_samples(self) -> List[int]:
        """Items per split, ``[train, valid, test]`` (TorchDrug's ``num_samples``)."""
        return [int((self._split_ids == i).sum()) for i in range(3)]

    def target(self, index: int) -> torch.Tensor:
        """The target of item ``index`` (multi-label: float32 [T] of 0/1; see :mod:`..samples`)."""
        if self._positive is not None:
            out = torch.zeros(len(self.tasks), dtype=torch.float32)
            out[torch.as_tensor(self._positive[index], dtype=torch.long)] = 1.0
            return out
        t = self._dense[index]
        return t.clone()

    def target_matrix(self) -> torch.Tensor:
        """Every item's target stacked (``[N, T]`` float32, or ``[N]`` int64 for multi-class) without reading
        any structure, e.g. for label statistics or target normalisation. Raises for unlabelled data."""
        if self._positive is not None:
            out = torch.zeros(len(self), len(self.tasks), dtype=torch.float32)
            rows = [i for i, p in enumerate(self._positive) for _ in p]
            cols = [c for p in self._positive for c in p]
            out[torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)] = 1.0
            return out
        if self._dense is None:
            raise ValueError(f"{type(self).__name__} has no targets (unlabelled data)")
        return self._dense.clone()

    def protein(self, index: int):
        """Item ``index``'s :class:`~esmgear_fast.io.Protein` (no transform)."""
        c, j = self._entry[index].tolist()
        protein = self._caches[c][j]
        chain = None if self._chains is None else self._chains[index]
        if chain is not None:
            protein = protein.chain_slice(chain)
        protein.name = self.names[index]
        return protein

    def __getitem__(self, index: int) -> Dict:
        index = int(index)
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {type(self).__name__} of {n} items")
        index %= n
        sample = {"protein": self.protein(index)}
        if self._dense is not None or self._positive is not None:
            sample["target"] = self.target(index)
        if self.transform is not None:
            sample = self.transform(sample)
        return sample

    def subset(self, indices: Sequence[int]) -> "ProteinDataset":
        """A dataset of the same class holding items ``indices`` (storage shared, nothing re-read)."""
        idx = np.asarray(list(indices) if not isinstance(indices, (np.ndarray, torch.Tensor)) else indices,
                         dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"subset indices out of range for {type(self).__name__} of {n} items")
        idx = idx % max(n, 1)
        new = copy.copy(self)
        new._entry = self._entry[idx]
        new.names = [self.names[i] for i in idx.tolist()]
        new._split_ids = self._split_ids[idx]
        new._lengths = self._lengths[torch.from_numpy(idx)]
        if self._dense is not None:
            new._dense = self._dense[torch.from_numpy(idx)]
        if self._positive is not None:
            new._positive = [self._positive[i] for i in idx.tolist()]
        if self._chains is not None:
            new._chains = [self._chains[i] for i in idx.tolist()]
        return new

    def split(self) -> Tuple["ProteinDataset", "ProteinDataset", "ProteinDataset"]:
        """``(train, valid, test)`` datasets of the same class, each in this dataset's order."""
        return tuple(self.subset(np.nonzero(self._split_ids == i)[0]) for i in range(3))

    def __repr__(self) -> str:
        tr, va, te = self.num_samples
        return (f"{type(self).__name__}(items={len(self)}, train/valid/test={tr}/{va}/{te}, "
                f"tasks={len(self.tasks)}, task_type={self.task_type!r})")


# ---------------------------------------------------------------------------------------------------------
# parallel parsing of zip members / files into a cache

@dataclass
class ParseResult:
    """What :func:`parse_members_to_cache` did: the cache (``None`` if nothing parsed) and the failures."""

    cache: Optional[ProteinCache]
    keys: List[str]
    sources: List[str] = field(default_factory=list)
    failures: List[Tuple[str, str]] = field(default_factory=list)
    parse_seconds: float = 0.0

    @property
    def structures_per_second(self) -> float:
        n = len(self.keys) + len(self.failures)
        return n / self.parse_seconds if self.parse_seconds > 0 else float("inf")


_ZIPS: Dict[str, zipfile.ZipFile] = {}


def _open_zip(path: str) -> zipfile.ZipFile:
    zf = _ZIPS.get(path)
    if zf is None:
        zf = zipfile.ZipFile(path)
        _ZIPS[path] = zf
    return zf


def _arrays_from_bytes(data: bytes, display: str, name: str) -> dict:
    """Parses one structure file's bytes like :func:`esmgear_fast.io.read_structure_arrays` does."""
    from ...io.errors import StructureParseError
    from ...io import structure as st

    path = Path(display)
    st._format_from_suffix(path)
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError) as exc:
            raise StructureParseError(display, f"corrupt or truncated gzip data: {exc}") from None
    if not data.strip():
        raise StructureParseError(display, "empty file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    fmt = st.detect_format(path, text)
    if fmt == "pdb":
        from ...io.pdb_fast import read_pdb_records

        records, chain_order = read_pdb_records(text, display)
    else:
        if "_atom_site." not in text:
            raise StructureParseError(display, "mmCIF file has no _atom_site category (no coordinates)")
        from ...io._biopython import read_biopython_records

        records, chain_order = read_biopython_records(text, fmt, display, name)
    if not records and (fmt == "cif" or st._COORDINATE_RECORD.search(text) is None):
        raise StructureParseError(display, "no ATOM/HETATM records in the first model")
    from ...io._assemble import assemble

    return assemble(records, chain_order, path=display, name=name, chains=None,
                    use_bfactor_as_plddt=st._is_predicted(text, fmt))


def _parse_task(task):
    """Worker: ``(container, member, key)`` -> ``(ok, arrays or error text)``; container "" = plain file."""
    container, member, key = task
    display = f"{container}:{member}" if container else member
    try:
        if container:
            try:
                data = _open_zip(container).read(member)
            except (zipfile.BadZipFile, zlib_error(), EOFError, OSError) as exc:
                return False, f"cannot read {member} from {container}: {type(exc).__name__}: {exc}"
        else:
            data = Path(member).read_bytes()
        arrays = _arrays_from_bytes(data, display, key)
        arrays["name"] = key
        return True, arrays
    except Exception as exc:  # noqa: BLE001 - every failure is listed, none is fatal
        from ...io.errors import StructureParseError

        text = exc.problem if isinstance(exc, StructureParseError) else f"{type(exc).__name__}: {exc}"
        return False, " ".join(str(text).split())


def _rdkit_rejects(task) -> bool:
    """Worker: whether RDKit's PDB reader with TorchDrug's settings (``Chem.MolFromPDBFile(path)``:
    sanitize, remove hydrogens) returns no molecule for ``(container, member)``."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    container, member = task
    try:
        data = _open_zip(container).read(member) if container else Path(member).read_bytes()
        return Chem.MolFromPDBBlock(data.decode("latin-1")) is None
    except Exception:  # noqa: BLE001 - unreadable for RDKit too
        return True


def rdkit_rejections(tasks: Sequence[Tuple[str, str]], workers: Optional[int] = None) -> List[bool]:
    """For every ``(zip path or "", member or file path)``: does TorchDrug's RDKit-based reader reject it?

    Needs the optional ``rdkit`` package (``pip install rdkit``); raises ``ImportError`` saying so.
    """
    try:
        import rdkit  # noqa: F401
    except ImportError:
        raise ImportError("rdkit_check=True needs the optional rdkit package (pip install rdkit) to tell which "
                          "files TorchDrug's RDKit-based reader rejects") from None
    workers = default_workers() if workers is None else int(workers)
    tasks = list(tasks)
    if workers == 1 or len(tasks) <= 1:
        out = [_rdkit_rejects(t) for t in tasks]
    else:
        _ZIPS.clear()
        with _pool_context().Pool(min(workers, len(tasks))) as pool:
            out = pool.map(_rdkit_rejects, tasks, chunksize=max(1, min(32, len(tasks) // (workers * 8))))
    for zf in _ZIPS.values():
        zf.close()
    _ZIPS.clear()
    return out


def zlib_error():
    import zlib

    return zlib.error


def _pool_context():
    if sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover
        return max(1, os.cpu_count() or 1)


def parse_members_to_cache(tasks: Sequence[Tuple[str, str, str]], out: Union[str, os.PathLike],
                           workers: Optional[int] = None, progress: bool = False,
                           desc: str = "parsing") -> ParseResult:
    """Parses ``(zip_path or "", member or file path, key)`` tasks in parallel into the cache ``out``.

    Entries keep task order and are named by ``key``; the ``sources`` column of the cache holds
    ``member``. Failures (unreadable members, parse errors) are returned and written to
    ``OUT.failures.tsv`` (``path<TAB>error``); no cache is written when nothing could be parsed.
    """
    out = Path(out)
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    entries, sources, keys, failures = [], [], [], []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), unit="file", desc=desc, file=sys.stderr, dynamic_ncols=True)
    t0 = time.perf_counter()

    def consume(task, result):
        ok, payload = result
        if ok:
            entries.append(payload)
            sources.append(task[1])
            keys.append(task[2])
        else:
            failures.append((task[1], payload))
        if bar is not None:
            bar.update(1)

    if workers == 1 or len(tasks) <= 1:
        for task in tasks:
            consume(task, _parse_task(task))
    else:
        n_proc = min(workers, len(tasks))
        chunksize = max(1, min(32, len(tasks) // (n_proc * 8)))
        _ZIPS.clear()  # never share an open zip handle across fork
        with _pool_context().Pool(n_proc) as pool:
            for task, result in zip(tasks, pool.imap(_parse_task, tasks, chunksize=chunksize)):
                consume(task, result)
    for zf in _ZIPS.values():
        zf.close()
    _ZIPS.clear()
    parse_seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    cache = None
    if entries:
        write_cache(entries, out, sources)
        cache = ProteinCache(out)
    write_failures(out.with_name(out.name + ".failures.tsv"), failures)
    return ParseResult(cache=cache, keys=keys, sources=sources, failures=failures, parse_seconds=parse_seconds)


def write_failures(path: Path, failures: Sequence[Tuple[str, str]]) -> None:
    """Writes ``path<TAB>error`` lines atomically."""
    atomic_write_text(path, "path\terror\n" + "".join(f"{p}\t{e}\n" for p, e in failures))


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_json(path: Path) -> Optional[dict]:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None
