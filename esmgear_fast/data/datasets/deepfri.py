"""DeepFRI's EC and GO datasets as TorchDrug 0.2.1 distributes them: :class:`EnzymeCommission`, :class:`GeneOntology`.

Data (Zenodo record 6622158): ``EnzymeCommission.zip`` / ``GeneOntology.zip``, each holding one folder::

    EnzymeCommission/                      GeneOntology/
        nrPDB-EC_annot.tsv                     nrPDB-GO_annot.tsv
        nrPDB-EC_test.csv                      nrPDB-GO_test.csv
        train.zip valid.zip test.zip           train.zip valid.zip test.zip
        (per-split .txt lists, a FASTA: not used)

and each split zip holds ``<split>/<PDB>-<chain>_<n>.pdb`` (one chain per file). ``path`` may be the folder
that contains ``EnzymeCommission/`` (TorchDrug's ``path``), that folder itself, or a folder holding the
downloaded ``EnzymeCommission.zip`` (extracted once, as TorchDrug does). The split zips are read directly
(no unpacking); already extracted ``<split>/`` folders are read too. Loaders never download.

What TorchDrug does, and this module reproduces (so the samples, splits and label vectors are the same):

* samples: every ``<split>/*.pdb`` of train, valid, test in that order, each split sorted by file name;
  the sample key is the file name up to the first ``_`` (``1A0E-A_11110.pdb`` -> ``1A0E-A``);
* test cutoff: keys whose column for the chosen cutoff in ``nrPDB-*_test.csv`` (header
  ``PDB-chain,<30%,<40%,<50%,<70%,<95%``) is the string ``"0"`` are removed (from whichever split holds
  them);
* tasks (label-vector order): EC row 1 of the annotation; GO row 1 / 5 / 9 for MF / BP / CC (rows 3 / 7 /
  11 hold the term names, exposed as ``task_descriptions``);
* targets: float32 ``[T]`` with 1 at the key's annotated terms; a GO chain whose branch column is empty
  stays in that branch's dataset with an all-zero target;
* the protein is every residue with a C-alpha atom of every chain in the file (each file holds one chain).

Differences, all reported rather than silent: TorchDrug drops files its RDKit-based reader
(``Chem.MolFromPDBFile``) rejects without saying which; here every file our reader parses is kept, and
files it cannot read are listed in ``failures`` (and ``<cache>/<split>.pt.failures.tsv``) with a warning.
``rdkit_check=True`` (optional ``rdkit`` package) lists both kinds of difference: ``rdkit_rejected`` (kept
here, dropped by TorchDrug; e.g. chains RDKit cannot sanitise) and ``rdkit_only`` (read by RDKit, e.g.
partially from a truncated file, but in ``failures`` here). Annotated chains without any
structure file are listed in ``missing_structures``. A structure file whose key has no annotation line,
an annotation line naming a term absent from the task list, a malformed line, or an unreadable
(truncated) split zip raises ``ValueError`` naming the file and the entry (TorchDrug fails later with a
``KeyError``). A chain annotated twice keeps its last line (TorchDrug's rule), with a warning
(``duplicate_annotations``).

Structures are parsed once, in parallel (``workers`` processes), into one memory-mapped protein cache per
split, ``<cache_dir>/<split>.pt`` (default ``cache_dir``: ``<folder>/esmgear_fast_cache``), and reloaded
from there on later constructions (a manifest next to it records the source zip's size and modification
time and the package version; a changed zip or a new version is re-parsed). GO's three branches share one cache.
``python -m esmgear_fast.data.datasets {EC,GO} PATH --workers N`` builds the caches ahead of a run.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
import time
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..cache import ProteinCache
from ._base import (SPLITS, ProteinDataset, atomic_write_text, parse_members_to_cache, rdkit_rejections,
                    read_json)

__all__ = ["EnzymeCommission", "GeneOntology", "read_test_filter"]

TEST_CUTOFFS = (0.3, 0.4, 0.5, 0.7, 0.95)
_MANIFEST_FORMAT = "esmgear_fast.deepfri_split_cache"
_MANIFEST_VERSION = 1


def read_test_filter(csv_file: Union[str, os.PathLike], test_cutoff: float) -> set:
    """Keys removed at ``test_cutoff``: rows of ``nrPDB-*_test.csv`` whose cutoff column is ``"0"``."""
    if test_cutoff not in TEST_CUTOFFS:
        raise ValueError(f"unknown test_cutoff {test_cutoff!r}; choose one of {list(TEST_CUTOFFS)}")
    column = TEST_CUTOFFS.index(test_cutoff) + 1
    removed = set()
    with open(csv_file, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter=",")
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{csv_file}: empty file (expected header PDB-chain,<30%,<40%,<50%,<70%,<95%)")
        for lineno, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) <= column:
                raise ValueError(f"{csv_file}: line {lineno} ({row[0]!r}) has {len(row)} columns, the "
                                 f"{test_cutoff} cutoff needs column {column + 1}")
            if row[column] == "0":
                removed.add(row[0])
    return removed


def _fingerprint(source: Path) -> dict:
    """Identifies a split's source (zip: size and mtime; folder: its .pdb listing) and the parsing version."""
    from ... import __version__

    if source.is_file():
        st = source.stat()
        return {"source": source.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "esmgear_fast": __version__}
    digest = hashlib.sha1()
    count = 0
    for entry in sorted(os.scandir(source), key=lambda e: e.name):
        if entry.name.endswith(".pdb") and entry.is_file():
            st = entry.stat()
            digest.update(f"{entry.name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
            count += 1
    return {"source": source.name, "num_members": count, "listing_sha1": digest.hexdigest(),
            "esmgear_fast": __version__}


class _DeepFRIDataset(ProteinDataset):
    folder: str = ""
    archive: str = ""
    url: str = ""
    md5: str = ""
    annotation_file: str = ""
    test_file: str = ""
    test_cutoffs = TEST_CUTOFFS
    task_type = "multilabel"

    def _setup(self, path, test_cutoff, transform, workers, cache_dir, rebuild, progress, rdkit_check) -> None:
        if test_cutoff not in TEST_CUTOFFS:
            raise ValueError(f"unknown test_cutoff {test_cutoff!r} for {type(self).__name__}; "
                             f"choose one of {list(TEST_CUTOFFS)}")
        self.test_cutoff = test_cutoff
        self.root = self._locate(path)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else self.root / "esmgear_fast_cache"
        removed = read_test_filter(self.root / self.test_file, test_cutoff)
        self.duplicate_annotations: List[Tuple[str, int]] = []
        tasks, positives, descriptions = self._read_annotation(self.root / self.annotation_file)
        if self.duplicate_annotations:
            warnings.warn(f"{self.root / self.annotation_file}: {len(self.duplicate_annotations)} chain(s) annotated "
                          f"more than once; the last line wins, as in TorchDrug (listed in .duplicate_annotations: "
                          f"(chain, line)), e.g. {self.duplicate_annotations[:3]}", stacklevel=3)
        self.task_descriptions = descriptions

        caches, entry, names, split_ids, pos, failures = [], [], [], [], [], []
        sources: List[str] = []
        structure_keys = set()
        num_filtered = 0
        rdkit_rejected_files = set()
        for s, split in enumerate(SPLITS):
            cache, keys, srcs, split_failures = self._load_split(split, workers, rebuild, progress)
            if rdkit_check:
                rdkit_rejected_files.update(self._rdkit_split(split, workers))
            failures.extend(split_failures)
            structure_keys.update(keys)
            structure_keys.update(_key(m) for m, _ in split_failures)
            c = len(caches)
            if cache is not None:
                caches.append(cache)
            for j, (key, src) in enumerate(zip(keys, srcs)):
                if key in removed:
                    num_filtered += 1
                    continue
                if key not in positives:
                    raise ValueError(f"{self.root / self.annotation_file}: no annotation line for {key!r} "
                                     f"(structure file {src} in {split})")
                entry.append((c, j))
                names.append(key)
                split_ids.append(s)
                pos.append(positives[key])
                sources.append(src)
        self.failures: List[Tuple[str, str]] = failures
        self.num_filtered = num_filtered
        self.missing_structures: List[str] = sorted(set(positives) - structure_keys)
        self.sources = sources
        self.rdkit_rejected: Optional[List[str]] = None
        self.rdkit_only: Optional[List[str]] = None
        if rdkit_check:
            self.rdkit_rejected = [n for n, src in zip(names, sources) if src in rdkit_rejected_files]
            self.rdkit_only = [f for f, _ in failures if f not in rdkit_rejected_files and _key(f) not in removed]
        if failures:
            warnings.warn(f"{type(self).__name__}: {len(failures)} structure file(s) could not be read and are "
                          f"left out (listed in .failures and {self.cache_dir}/<split>.pt.failures.tsv); first: "
                          f"{failures[0][0]}: {failures[0][1]}", stacklevel=3)
        if self.missing_structures:
            warnings.warn(f"{type(self).__name__}: {len(self.missing_structures)} annotated chain(s) have no "
                          f"structure file in any split (listed in .missing_structures), e.g. "
                          f"{self.missing_structures[:3]}", stacklevel=3)
        self._init_storage(caches=caches, entry=np.asarray(entry, dtype=np.int64).reshape(-1, 2), names=names,
                           split_ids=np.asarray(split_ids, dtype=np.int8), tasks=tasks, task_type="multilabel",
                           positive_targets=pos, transform=transform)

    # ------------------------------------------------------------------ files
    def _locate(self, path) -> Path:
        p = Path(os.path.expanduser(os.fspath(path)))
        for candidate in (p / self.folder, p):
            if (candidate / self.annotation_file).is_file():
                return candidate
        archive = p / self.archive
        if archive.is_file():
            return self._extract(archive, p)
        from ..download import missing_data_error

        layout = (f"{p}/{self.folder}/{self.annotation_file}\n{p}/{self.folder}/{self.test_file}\n"
                  f"{p}/{self.folder}/train.zip, valid.zip, test.zip   (each holding <split>/<PDB>-<chain>_<n>.pdb)\n"
                  f"(or just {p}/{self.archive}, which is then extracted once)")
        raise missing_data_error(f"{type(self).__name__} data", p, self.url, layout)

    def _extract(self, archive: Path, dest: Path) -> Path:
        tmp = dest / f".{self.folder}.extracting{os.getpid()}"
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
        except zipfile.BadZipFile as exc:
            raise ValueError(f"{archive}: not a readable zip archive ({exc}); the download may be truncated "
                             f"(expected md5 {self.md5}): delete it and download it again") from None
        if not (tmp / self.folder / self.annotation_file).is_file():
            raise ValueError(f"{archive}: does not contain {self.folder}/{self.annotation_file}")
        os.replace(tmp / self.folder, dest / self.folder)
        tmp.rmdir()
        return dest / self.folder

    def _split_source(self, split: str) -> Path:
        zpath = self.root / f"{split}.zip"
        if zpath.is_file():
            return zpath
        folder = self.root / split
        if folder.is_dir():
            return folder
        from ..download import missing_data_error

        raise missing_data_error(f"{type(self).__name__} {split} split", zpath, self.url,
                                 f"{zpath} holding {split}/<PDB>-<chain>_<n>.pdb (or an extracted {folder}/)")

    def _split_members(self, split: str, source: Path) -> List[Tuple[str, str]]:
        """``(zip path or "", member or file path)`` of every ``<split>/*.pdb``, sorted by file name."""
        if source.is_file():
            try:
                with zipfile.ZipFile(source) as zf:
                    names = zf.namelist()
            except (zipfile.BadZipFile, OSError) as exc:
                raise ValueError(f"{source}: not a readable zip archive ({exc}); it may be truncated: restore it "
                                 f"from {self.archive} ({self.url})") from None
            members = sorted(n for n in names if os.path.dirname(n) == split and n.endswith(".pdb"))
            return [(str(source), m) for m in members]
        members = sorted(f.name for f in source.iterdir() if f.name.endswith(".pdb") and f.is_file())
        return [("", str(source / m)) for m in members]

    def _load_split(self, split, workers, rebuild, progress):
        source = self._split_source(split)
        fingerprint = _fingerprint(source)
        cache_path = self.cache_dir / f"{split}.pt"
        manifest_path = self.cache_dir / f"{split}.manifest.json"
        manifest = None if rebuild else read_json(manifest_path)
        if (manifest is not None and manifest.get("format") == _MANIFEST_FORMAT
                and manifest.get("version") == _MANIFEST_VERSION and manifest.get("fingerprint") == fingerprint):
            failures = [tuple(f) for f in manifest["failures"]]
            if manifest["num_parsed"] == 0:
                return None, [], [], failures
            if cache_path.is_file():
                cache = ProteinCache(cache_path)
                if len(cache) == manifest["num_parsed"]:
                    return cache, list(cache.names), [os.path.basename(s) for s in cache.sources], failures
        t0 = time.perf_counter()
        jobs = [(c, m, _key(m)) for c, m in self._split_members(split, source)]
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            probe = self.cache_dir / f".write-test{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            raise PermissionError(f"{type(self).__name__}: cannot write the parsed cache to {self.cache_dir} ({exc}); "
                                  f"pass cache_dir= a writable folder") from None
        result = parse_members_to_cache(jobs, cache_path, workers=workers, progress=progress,
                                        desc=f"{type(self).__name__} {split}")
        failures = [(os.path.basename(m), e) for m, e in result.failures]
        manifest = {"format": _MANIFEST_FORMAT, "version": _MANIFEST_VERSION, "fingerprint": fingerprint,
                    "num_members": len(jobs), "num_parsed": len(result.keys), "failures": failures,
                    "parse_seconds": round(result.parse_seconds, 3)}
        atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
        if progress:
            print(f"{type(self).__name__} {split}: parsed {len(jobs)} files in {time.perf_counter() - t0:.1f} s "
                  f"({result.structures_per_second:.0f}/s), {len(failures)} failed; cache {cache_path}",
                  file=sys.stderr)
        return result.cache, result.keys, [os.path.basename(m) for m in result.sources], failures

    def _rdkit_split(self, split: str, workers) -> List[str]:
        """File names of ``split`` that TorchDrug's RDKit reader rejects (cached in the split's manifest)."""
        manifest_path = self.cache_dir / f"{split}.manifest.json"
        manifest = read_json(manifest_path)
        if manifest is not None and "rdkit_rejected" in manifest:
            return list(manifest["rdkit_rejected"])
        source = self._split_source(split)
        tasks = self._split_members(split, source)
        rejected = [os.path.basename(m) for (c, m), bad in zip(tasks, rdkit_rejections(tasks, workers)) if bad]
        if manifest is not None:
            manifest["rdkit_rejected"] = rejected
            atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
        return rejected

    def _note_duplicate(self, positives, key, lineno) -> None:
        if key in positives:
            self.duplicate_annotations.append((key, lineno))

    def _read_annotation(self, tsv):  # pragma: no cover - abstract
        raise NotImplementedError


def _key(member: str) -> str:
    return os.path.basename(member).split("_")[0]


def _term_ids(tsv, lineno, key, field_text, task2id) -> List[int]:
    try:
        return [task2id[term] for term in field_text.split(",")]
    except KeyError as exc:
        raise ValueError(f"{tsv}: line {lineno} ({key!r}): term {exc.args[0]!r} is not in the task list of the "
                         f"header") from None


class EnzymeCommission(_DeepFRIDataset):
    """DeepFRI's EC dataset (538 EC numbers, multi-label), identical to TorchDrug 0.2.1's; module docstring.

    Statistics at ``test_cutoff=0.95`` (TorchDrug): 15,011 / 1,664 / 1,840 train / valid / test.

    Args:
        path: folder containing ``EnzymeCommission/`` (or that folder, or ``EnzymeCommission.zip``).
        test_cutoff: one of 0.3, 0.4, 0.5, 0.7, 0.95 (sequence identity of test chains to the training set).
        transform: applied to every sample dict, e.g. ``TruncateProtein(550)``.
        workers: parser processes for the first construction (default: usable CPUs).
        cache_dir: where the parsed cache lives (default ``<folder>/esmgear_fast_cache``).
        rebuild: re-parse even when a valid cache exists.
        progress: progress bars and a summary on stderr while parsing.
        rdkit_check: also run TorchDrug's RDKit reader over the files (needs ``pip install rdkit``; once,
            the answer is kept in the cache manifest) and fill ``rdkit_rejected`` (items kept here that
            TorchDrug drops) and ``rdkit_only`` (files TorchDrug reads that are in ``failures`` here).
    """

    folder = "EnzymeCommission"
    archive = "EnzymeCommission.zip"
    url = "https://zenodo.org/record/6622158/files/EnzymeCommission.zip"
    md5 = "33f799065f8ad75f87b709a87293bc65"
    annotation_file = "nrPDB-EC_annot.tsv"
    test_file = "nrPDB-EC_test.csv"

    def __init__(self, path, test_cutoff: float = 0.95, transform: Optional[Callable] = None,
                 workers: Optional[int] = None, cache_dir=None, rebuild: bool = False, progress: bool = True,
                 rdkit_check: bool = False):
        self._setup(path, test_cutoff, transform, workers, cache_dir, rebuild, progress, rdkit_check)

    def _read_annotation(self, tsv):
        positives: Dict[str, List[int]] = {}
        with open(tsv, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh, delimiter="\t")
            header = [next(reader, None) for _ in range(3)]
            if any(h is None for h in header):
                raise ValueError(f"{tsv}: fewer than the 3 header rows (### EC-numbers / EC list / ### PDB-chain ...)")
            tasks = header[1]
            task2id = {t: i for i, t in enumerate(tasks)}
            for lineno, row in enumerate(reader, 4):
                if not row:
                    continue
                if len(row) != 2:
                    raise ValueError(f"{tsv}: line {lineno} has {len(row)} tab-separated fields, expected 2 "
                                     f"(PDB-chain, EC numbers): {row[:3]}")
                self._note_duplicate(positives, row[0], lineno)
                positives[row[0]] = _term_ids(tsv, lineno, row[0], row[1], task2id)
        return list(task2id), positives, None


class GeneOntology(_DeepFRIDataset):
    """DeepFRI's GO dataset for one branch (MF 489, BP 1,943, CC 320 terms), identical to TorchDrug 0.2.1's.

    Statistics at ``test_cutoff=0.95`` (TorchDrug): 27,496 / 3,053 / 2,991 train / valid / test (every
    branch: chains without terms of the branch are kept with all-zero targets).

    Args: as :class:`EnzymeCommission`, plus ``branch`` (``"MF"``, ``"BP"`` or ``"CC"``).
    """

    folder = "GeneOntology"
    archive = "GeneOntology.zip"
    url = "https://zenodo.org/record/6622158/files/GeneOntology.zip"
    md5 = "376be1f088cd1fe720e1eaafb701b5cb"
    annotation_file = "nrPDB-GO_annot.tsv"
    test_file = "nrPDB-GO_test.csv"
    branches = ("MF", "BP", "CC")

    def __init__(self, path, branch: str = "MF", test_cutoff: float = 0.95, transform: Optional[Callable] = None,
                 workers: Optional[int] = None, cache_dir=None, rebuild: bool = False, progress: bool = True,
                 rdkit_check: bool = False):
        if branch not in self.branches:
            raise ValueError(f"unknown GO branch {branch!r}; choose one of {list(self.branches)}")
        self.branch = branch
        self._setup(path, test_cutoff, transform, workers, cache_dir, rebuild, progress, rdkit_check)

    def _read_annotation(self, tsv):
        b = self.branches.index(self.branch)
        positives: Dict[str, List[int]] = {}
        with open(tsv, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh, delimiter="\t")
            header = [next(reader, None) for _ in range(13)]
            if any(h is None for h in header):
                raise ValueError(f"{tsv}: fewer than the 13 header rows of a DeepFRI GO annotation file")
            tasks = header[4 * b + 1]
            descriptions = header[4 * b + 3]
            task2id = {t: i for i, t in enumerate(tasks)}
            for lineno, row in enumerate(reader, 14):
                if not row:
                    continue
                text = row[b + 1] if b + 1 < len(row) else ""
                self._note_duplicate(positives, row[0], lineno)
                positives[row[0]] = _term_ids(tsv, lineno, row[0], text, task2id) if text else []
        return list(task2id), positives, list(descriptions)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m esmgear_fast.data.datasets {EC,GO} PATH [--workers N] [--rdkit-check]``: builds the
    parsed caches once (e.g. before a multi-GPU run) and prints split sizes, failures and missing chains."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m esmgear_fast.data.datasets",
                                 description="Parse DeepFRI's EC or GO structures into esmgear_fast's caches.")
    ap.add_argument("dataset", choices=("EC", "GO"))
    ap.add_argument("path", help="folder holding EnzymeCommission/ or GeneOntology/ (or the .zip)")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--test-cutoff", type=float, default=0.95)
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--rdkit-check", action="store_true", help="also list TorchDrug/RDKit reader differences")
    args = ap.parse_args(argv)
    cls = EnzymeCommission if args.dataset == "EC" else GeneOntology
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # everything is printed below
        ds = cls(args.path, test_cutoff=args.test_cutoff, workers=args.workers, cache_dir=args.cache_dir,
                 rebuild=args.rebuild, rdkit_check=args.rdkit_check)
    tr, va, te = ds.num_samples
    print(f"{cls.__name__} (test_cutoff={args.test_cutoff}): {tr} / {va} / {te} train / valid / test, "
          f"{len(ds.tasks)} tasks, {ds.num_filtered} removed by the test cutoff; cache {ds.cache_dir}")
    print(f"{len(ds.failures)} unreadable file(s){':' if ds.failures else ''}")
    for name, error in ds.failures[:20]:
        print(f"  {name}: {error}")
    print(f"{len(ds.missing_structures)} annotated chain(s) without a structure file")
    if args.rdkit_check:
        print(f"{len(ds.rdkit_rejected)} item(s) TorchDrug's RDKit reader rejects (kept here): "
              f"{ds.rdkit_rejected[:20]}")
        print(f"{len(ds.rdkit_only)} file(s) RDKit reads that fail here: {ds.rdkit_only[:20]}")
    return 0

