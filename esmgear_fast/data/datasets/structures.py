"""Your own structures (and labels) as a dataset: :class:`StructureDataset`.

::

    ds = StructureDataset("my_pdbs/", labels="labels.csv", task="multilabel")   # folder + CSV
    train, valid, test = ds.split()                                               # split column or seeded 80/10/10

Structures: a folder (searched recursively), a glob pattern (``"data/**/*.cif.gz"``), one file, or a list
of files; PDB or mmCIF, plain or gzipped. They are parsed once, in parallel, with
:func:`esmgear_fast.data.prepare.prepare` into a memory-mapped cache keyed by the files' paths, sizes and
modification times (``<folder>/esmgear_fast_cache/`` for a folder, else ``$ESMGEAR_FAST_CACHE`` or
``~/.cache/esmgear_fast/structures``), and reloaded from it afterwards.

Labels: a CSV (``,``) or TSV (``.tsv``/``.tab``: tab) file with a header row:

* ``name`` (required): the structure's file stem (``1abc`` for ``1abc.pdb.gz``; a file name is accepted too);
* ``chain`` (optional): an author chain ID; the item is then that chain only (a blank cell = whole file);
* ``split`` (optional): ``train`` / ``valid`` (or ``val``, ``validation``) / ``test``; without the column the
  items are split at random (``split_fractions``, ``seed``);
* label column(s), by ``task``:

  =============  ===============================================  ===================================
  ``task``       label cells                                      target per item
  =============  ===============================================  ===================================
  multilabel     one column of comma-separated terms (may be      float32 [T] of 0/1; tasks = ``tasks``
                 empty)                                           or the sorted set of terms
  multiclass     one column, one class name per row               int64 [] class index; tasks = classes
  binary         one or more columns of 0/1 (true/false, yes/no)  float32 [T], NaN where blank
  regression     one or more numeric columns                      float32 [T], NaN where blank
  =============  ===============================================  ===================================

Items are the CSV rows in file order (without labels: every structure file, in sorted path order, with
no target). Errors name the file and the row: a row naming a structure that is not there, a duplicate
item, a term or class absent from ``tasks``, a value that is not a number, a chain the file lacks, an
unknown split; a file that cannot be parsed (empty, truncated, no protein residue) raises unless
``on_error="skip"``, which leaves it out, warns, and lists it in ``failures``.
"""
from __future__ import annotations

import csv
import glob as globlib
import hashlib
import math
import os
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ...io.structure import is_structure_file, structure_name
from ..cache import ProteinCache
from ..prepare import find_structure_files, prepare
from ._base import SPLITS, TASK_TYPES, ProteinDataset

__all__ = ["StructureDataset"]

PathLike = Union[str, os.PathLike]
_SPLIT_ALIASES = {"train": 0, "training": 0, "valid": 1, "val": 1, "validation": 1, "test": 2, "testing": 2}
_TRUE = {"1", "1.0", "true", "yes", "y", "t"}
_FALSE = {"0", "0.0", "false", "no", "n", "f"}


def _resolve_structures(structures) -> Tuple[List[Path], Optional[Path]]:
    """Returns (absolute file paths, folder or None)."""
    if isinstance(structures, (str, os.PathLike)):
        s = os.path.expanduser(os.fspath(structures))
        p = Path(s)
        if p.is_dir():
            return [f.resolve() for f in find_structure_files(p)], p.resolve()
        if p.is_file():
            return [p.resolve()], None
        if any(ch in s for ch in "*?["):
            files = sorted(Path(f).resolve() for f in globlib.glob(s, recursive=True) if Path(f).is_file())
            if not files:
                raise FileNotFoundError(f"StructureDataset: the pattern {s!r} matches no file")
            return files, None
        raise FileNotFoundError(f"StructureDataset: {s} is neither a folder, a file nor a glob pattern that exists")
    files = []
    for f in structures:
        p = Path(os.path.expanduser(os.fspath(f)))
        if not p.is_file():
            raise FileNotFoundError(f"StructureDataset: structure file {p} does not exist")
        files.append(p.resolve())
    if not files:
        raise ValueError("StructureDataset: the list of structure files is empty")
    return files, None


def _default_cache_dir(folder: Optional[Path]) -> Path:
    if folder is not None:
        return folder / "esmgear_fast_cache"
    env = os.environ.get("ESMGEAR_FAST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "esmgear_fast" / "structures"


def _read_table(path: Path, delimiter: Optional[str]) -> Tuple[List[str], List[Dict[str, str]]]:
    if not path.is_file():
        raise FileNotFoundError(f"StructureDataset: label file {path} does not exist")
    if delimiter is None:
        delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        header = next(reader, None)
        if not header:
            raise ValueError(f"{path}: empty label file (a header row is needed)")
        header = [h.strip() for h in header]
        dup = sorted({h for h in header if header.count(h) > 1})
        if dup:
            raise ValueError(f"{path}: duplicate column names {dup}")
        rows = []
        for lineno, row in enumerate(reader, 2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}: line {lineno} has {len(row)} fields, the header has {len(header)}")
            rows.append((lineno, {h: c.strip() for h, c in zip(header, row)}))
    return header, rows


class StructureDataset(ProteinDataset):
    """A dataset of your own structure files with optional labels; see the module docstring.

    Args:
        structures: folder, glob pattern, file, or list of files.
        labels: CSV/TSV label file, or ``None`` for unlabelled data (embedding, pre-training).
        task: ``"multilabel"``, ``"multiclass"``, ``"binary"`` or ``"regression"`` (required with labels).
        tasks: the label vocabulary in label-vector order (multilabel terms / multiclass classes);
            default: sorted set found in the file. Values outside it are errors.
        label_columns: the label column(s); default every column except name/chain/split.
        name_column, chain_column, split_column: column names.
        split_fractions: train/valid/test fractions for the seeded random split (no split column).
        seed: seed of the random split.
        transform: applied to every sample dict.
        cache_dir: where the parsed cache lives (see the module docstring).
        workers: parser processes (default: usable CPUs).
        on_error: ``"raise"`` (default) or ``"skip"`` for structure files that cannot be parsed.
        progress: progress bar while parsing.
        delimiter: CSV delimiter (default by suffix).
        term_separator: separator of multilabel terms (default ``","``).
    """

    def __init__(self, structures, labels: Optional[PathLike] = None, task: Optional[str] = None, *,
                 tasks: Optional[Sequence[str]] = None, label_columns: Optional[Sequence[str]] = None,
                 name_column: str = "name", chain_column: str = "chain", split_column: str = "split",
                 split_fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
                 transform: Optional[Callable] = None, cache_dir: Optional[PathLike] = None,
                 workers: Optional[int] = None, on_error: str = "raise", progress: bool = False,
                 delimiter: Optional[str] = None, term_separator: str = ","):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if labels is not None and task not in TASK_TYPES:
            raise ValueError(f"StructureDataset: task must be one of {TASK_TYPES} when labels are given, got {task!r}")
        if labels is None and task is not None:
            raise ValueError("StructureDataset: task given without labels")
        fractions = [float(f) for f in split_fractions]
        if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
            raise ValueError(f"split_fractions must be three non-negative numbers summing to 1, got {split_fractions}")

        files, folder = _resolve_structures(structures)
        by_stem: Dict[str, Path] = {}
        for f in files:
            stem = structure_name(f)
            if stem in by_stem:
                raise ValueError(f"StructureDataset: two structure files have the name {stem!r}: {by_stem[stem]} "
                                 f"and {f} (names must be unique; rename one or pass a list)")
            by_stem[stem] = f
        self.structure_root = folder

        # ---- rows: (name, stem, chain, split id or None, raw label cells)
        if labels is None:
            rows = [(stem, stem, None, None, None, None) for stem in by_stem]
            header, label_cols, label_path = [], [], None
        else:
            label_path = Path(os.path.expanduser(os.fspath(labels)))
            header, raw = _read_table(label_path, delimiter)
            if name_column not in header:
                raise ValueError(f"{label_path}: no {name_column!r} column (columns: {header})")
            special = {name_column, chain_column, split_column}
            label_cols = list(label_columns) if label_columns is not None else [h for h in header if h not in special]
            absent = [c for c in label_cols if c not in header]
            if absent:
                raise ValueError(f"{label_path}: label column(s) {absent} not in the header {header}")
            if not label_cols:
                raise ValueError(f"{label_path}: no label column (columns: {header})")
            if task in ("multilabel", "multiclass") and len(label_cols) != 1:
                raise ValueError(f"{label_path}: task {task!r} needs exactly one label column, got {label_cols} "
                                 f"(pass label_columns=[...])")
            rows, missing = [], []
            for lineno, r in raw:
                stem = r[name_column]
                if stem not in by_stem and is_structure_file(stem):
                    stem = structure_name(stem)
                if stem not in by_stem:
                    missing.append(f"line {lineno}: {r[name_column]!r}")
                    continue
                chain = r.get(chain_column) or None if chain_column in header else None
                split = None
                if split_column in header:
                    value = r[split_column].lower()
                    if value not in _SPLIT_ALIASES:
                        raise ValueError(f"{label_path}: line {lineno}: unknown split {r[split_column]!r} "
                                         f"(use train, valid or test)")
                    split = _SPLIT_ALIASES[value]
                name = stem if chain is None else f"{stem}_{chain}"
                rows.append((name, stem, chain, split, [r[c] for c in label_cols], lineno))
            if missing:
                raise FileNotFoundError(
                    f"{label_path}: {len(missing)} row(s) name structures that are not among the "
                    f"{len(by_stem)} structure files given: " + "; ".join(missing[:10])
                    + (" ..." if len(missing) > 10 else ""))
            seen: Dict[str, int] = {}
            for name, _, _, _, _, lineno in rows:
                if name in seen:
                    raise ValueError(f"{label_path}: line {lineno}: {name!r} is already on line {seen[name]} "
                                     f"(duplicate item)")
                seen[name] = lineno
            if not rows:
                raise ValueError(f"{label_path}: no data rows")

        # ---- parse (only the files needed) into the cache
        needed = sorted({by_stem[r[1]] for r in rows})
        root = folder if folder is not None else Path(os.path.commonpath([str(p.parent) for p in needed]))
        cache_dir = Path(cache_dir) if cache_dir is not None else _default_cache_dir(folder)
        from ... import __version__

        digest = hashlib.sha1(f"esmgear_fast {__version__}\n".encode())
        for p in needed:
            st = p.stat()
            digest.update(f"{p}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        cache_path = cache_dir / f"structures-{digest.hexdigest()[:20]}.pt"
        failures_path = cache_path.with_name(cache_path.name + ".failures.tsv")
        self.cache_path = cache_path
        if not failures_path.is_file():
            prepare(root, cache_path, workers=workers, progress=progress, files=needed)
        failures = []
        with open(failures_path, encoding="utf-8") as fh:
            next(fh, None)
            for line in fh:
                path, _, error = line.rstrip("\n").partition("\t")
                failures.append((path, error))
        self.failures: List[Tuple[str, str]] = failures
        cache = ProteinCache(cache_path) if cache_path.is_file() else None
        rel = {}
        for p in needed:
            try:
                rel[p.relative_to(root).as_posix()] = p
            except ValueError:
                rel[str(p)] = p
        index_of = {}
        if cache is not None:
            for j, src in enumerate(cache.sources):
                index_of[rel[src]] = j
        if failures:
            listing = "; ".join(f"{p}: {e}" for p, e in failures[:5]) + (" ..." if len(failures) > 5 else "")
            if on_error == "raise":
                raise ValueError(f"StructureDataset: {len(failures)} structure file(s) could not be read "
                                 f"(all listed in {failures_path}): {listing}")
            warnings.warn(f"StructureDataset: {len(failures)} structure file(s) could not be read and are left "
                          f"out (listed in .failures and {failures_path}): {listing}", stacklevel=2)
            failed = {rel[p] for p, _ in failures}
            rows = [r for r in rows if by_stem[r[1]] not in failed]
            if not rows:
                raise ValueError("StructureDataset: no structure could be read")

        # ---- chains and lengths
        entry, chains, lengths = [], [], []
        chain_names_all = cache._data["chain_names"] if cache is not None else []
        for name, stem, chain, _, _, lineno in rows:
            j = index_of[by_stem[stem]]
            entry.append((0, j))
            chains.append(chain)
            start, end = cache._ptr[j], cache._ptr[j + 1]
            if chain is None:
                lengths.append(end - start)
                continue
            names_j = list(chain_names_all[cache._chain_ptr[j]:cache._chain_ptr[j + 1]])
            if chain not in names_j:
                raise ValueError(f"{label_path}: line {lineno}: chain {chain!r} is not in {by_stem[stem]} "
                                 f"(chains with protein residues: {names_j})")
            k = names_j.index(chain)
            lengths.append(int((cache._data["chain_id"][start:end] == k).sum()))

        # ---- targets
        dense, positives, task_list = None, None, []
        if labels is not None:
            dense, positives, task_list = self._targets(task, tasks, label_cols, rows, label_path, term_separator)

        # ---- splits
        if rows and rows[0][3] is not None:
            split_ids = np.asarray([r[3] for r in rows], dtype=np.int8)
        else:
            n = len(rows)
            n_train = int(round(fractions[0] * n))
            n_valid = min(n - n_train, int(round(fractions[1] * n)))
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).numpy()
            split_ids = np.full(n, 2, dtype=np.int8)
            split_ids[perm[:n_train]] = 0
            split_ids[perm[n_train:n_train + n_valid]] = 1
        self.seed = int(seed)
        self._init_storage(caches=[cache], entry=np.asarray(entry, dtype=np.int64).reshape(-1, 2),
                           names=[r[0] for r in rows], split_ids=split_ids, tasks=task_list,
                           task_type=task if task is not None else "multilabel", dense_targets=dense,
                           positive_targets=positives, chains=chains if any(c is not None for c in chains) else None,
                           lengths=torch.tensor(lengths, dtype=torch.long), transform=transform)
        if labels is None:
            self.task_type = None
        self.sources = [str(by_stem[r[1]]) for r in rows]

    @staticmethod
    def _targets(task, tasks, label_cols, rows, label_path, sep):
        if task == "multilabel":
            cells = [[t.strip() for t in r[4][0].split(sep) if t.strip()] for r in rows]
            vocab = list(tasks) if tasks is not None else sorted({t for c in cells for t in c})
            if len(set(vocab)) != len(vocab):
                raise ValueError(f"StructureDataset: duplicate entries in tasks: {vocab}")
            index = {t: i for i, t in enumerate(vocab)}
            positives = []
            for r, terms in zip(rows, cells):
                for t in terms:
                    if t not in index:
                        raise ValueError(f"{label_path}: line {r[5]} ({r[0]!r}): label {t!r} is not in the task list "
                                         f"({len(vocab)} tasks)")
                positives.append(torch.tensor(sorted({index[t] for t in terms}), dtype=torch.long))
            return None, positives, vocab
        if task == "multiclass":
            values = [r[4][0] for r in rows]
            for r, v in zip(rows, values):
                if not v:
                    raise ValueError(f"{label_path}: line {r[5]} ({r[0]!r}): empty class label")
            vocab = list(tasks) if tasks is not None else sorted(set(values))
            index = {t: i for i, t in enumerate(vocab)}
            out = []
            for r, v in zip(rows, values):
                if v not in index:
                    raise ValueError(f"{label_path}: line {r[5]} ({r[0]!r}): class {v!r} is not in the task list {vocab}")
                out.append(index[v])
            return torch.tensor(out, dtype=torch.long), None, vocab
        if tasks is not None and list(tasks) != list(label_cols):
            raise ValueError(f"StructureDataset: for {task} the tasks are the label columns {label_cols}; "
                             f"got tasks={list(tasks)}")
        out = torch.empty(len(rows), len(label_cols), dtype=torch.float32)
        for i, r in enumerate(rows):
            for k, cell in enumerate(r[4]):
                if cell == "":
                    out[i, k] = math.nan
                elif task == "binary":
                    v = cell.lower()
                    if v in _TRUE:
                        out[i, k] = 1.0
                    elif v in _FALSE:
                        out[i, k] = 0.0
                    else:
                        raise ValueError(f"{label_path}: line {r[5]} ({r[0]!r}): column {label_cols[k]!r}: "
                                         f"{cell!r} is not a binary label (0/1, true/false, yes/no)")
                else:
                    try:
                        value = float(cell)
                    except ValueError:
                        raise ValueError(f"{label_path}: line {r[5]} ({r[0]!r}): column {label_cols[k]!r}: "
                                         f"{cell!r} is not a number") from None
                    if not math.isfinite(value):
                        raise ValueError(f"{label_path}: line {r[5]} ({r[0]!r}): column {label_cols[k]!r}: "
                                         f"{cell!r} is not finite (leave the cell empty for a missing value)")
                    out[i, k] = value
        return out, None, list(label_cols)
