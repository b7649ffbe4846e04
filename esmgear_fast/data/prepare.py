"""Parses a folder of structure files in parallel into one protein cache.

Command line::

    python -m esmgear_fast.data.prepare SRC_DIR OUT [--workers N] [--chains A [B ...]]
                                        [--split-chains] [--parser auto|fast|biopython] [--strict] [--quiet]

* every ``.pdb .ent .cif .mmcif`` file (each optionally ``.gz``) under ``SRC_DIR`` is parsed, recursively,
  in sorted order of the relative path (so the cache order is deterministic);
* ``OUT`` is the cache file (see :mod:`esmgear_fast.data.cache`; load it with
  :class:`~esmgear_fast.data.ProteinCache`);
* files that fail are not fatal: they are listed in ``OUT.failures.tsv`` (written on every run,
  columns ``path`` and ``error``) and summarised on stderr; ``--strict`` makes any failure exit with 1;
* ``--chains`` keeps only those author chain IDs (files without them are failures); ``--split-chains``
  stores each chain as its own entry named ``<name>_<chain>``;
* ``--workers`` defaults to the number of usable CPUs; ``--workers 1`` parses in-process.

The summary line reports the number of structures per second. Exit status: 0 on success, 1 when no file
could be parsed (or any failed under ``--strict``), 2 for usage errors (e.g. no structure files found).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from ..io.errors import StructureParseError
from ..io.structure import is_structure_file, read_structure_arrays
from .cache import write_cache

__all__ = ["PrepareResult", "find_structure_files", "main", "prepare", "split_arrays_by_chain"]


@dataclass
class PrepareResult:
    """What :func:`prepare` did."""

    out: Optional[Path]
    failures_path: Path
    num_files: int
    num_proteins: int
    num_residues: int
    failures: List[Tuple[str, str]] = field(default_factory=list)
    parse_seconds: float = 0.0
    total_seconds: float = 0.0

    @property
    def structures_per_second(self) -> float:
        """Files parsed per second of parsing wall time (pool start-up included, cache writing excluded)."""
        return self.num_files / self.parse_seconds if self.parse_seconds > 0 else float("inf")


def find_structure_files(src_dir: Union[str, os.PathLike]) -> List[Path]:
    """Structure files under ``src_dir`` (recursive), sorted by their path relative to ``src_dir``."""
    root = Path(src_dir)
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for fn in filenames:
            p = Path(dirpath) / fn
            if is_structure_file(p) and p.is_file():
                found.append(p)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def split_arrays_by_chain(arrays: dict) -> List[dict]:
    """Splits a protein-arrays dict into one dict per chain (name ``<name>_<chain>``, skips not tracked)."""
    out = []
    chain_id = np.asarray(arrays["chain_id"])
    for index, chain in enumerate(arrays["chain_names"]):
        idx = np.nonzero(chain_id == index)[0]
        if idx.size == 0:
            continue
        out.append({
            "name": f"{arrays['name']}_{chain}",
            "sequence": "".join(arrays["sequence"][i] for i in idx),
            "pos": arrays["pos"][idx],
            "backbone": arrays["backbone"][idx],
            "chain_id": np.zeros(idx.size, dtype=np.int64),
            "chain_names": [chain],
            "residue_number": arrays["residue_number"][idx],
            "insertion_code": "".join(arrays["insertion_code"][i] for i in idx),
            "plddt": None if arrays.get("plddt") is None else arrays["plddt"][idx],
            "num_skipped_residues": 0,
        })
    return out


def _error_text(exc: BaseException) -> str:
    text = exc.problem if isinstance(exc, StructureParseError) else f"{type(exc).__name__}: {exc}"
    return " ".join(str(text).split())  # one line, no tabs


def _parse_one(task):
    """Worker: returns (ok, payload) with payload = list of arrays dicts or an error string."""
    path, chains, parser, split = task
    try:
        arrays = read_structure_arrays(path, chains, parser=parser)
        return True, (split_arrays_by_chain(arrays) if split else [arrays])
    except Exception as exc:  # noqa: BLE001 - every failure is reported, none is fatal
        return False, _error_text(exc)


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _pool_context():
    # fork starts workers instantly and needs no re-import; elsewhere use the platform default
    if sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


def prepare(
    src_dir: Union[str, os.PathLike],
    out: Union[str, os.PathLike],
    *,
    workers: Optional[int] = None,
    chains: Optional[Sequence[str]] = None,
    split_chains: bool = False,
    parser: str = "auto",
    progress: bool = True,
    files: Optional[Sequence[Union[str, os.PathLike]]] = None,
) -> PrepareResult:
    """Parses every structure file under ``src_dir`` into the cache ``out``; see the module docstring.

    ``files`` overrides the discovered file list (paths are still reported relative to ``src_dir``
    where possible). No cache is written when no file could be parsed (``result.out`` is ``None``).
    """
    t0 = time.perf_counter()
    src = Path(src_dir)
    out = Path(out)
    failures_path = out.with_name(out.name + ".failures.tsv")
    if files is None:
        if not src.is_dir():
            raise NotADirectoryError(f"{src} is not a directory")
        paths = find_structure_files(src)
    else:
        paths = [Path(f) for f in files]
    workers = _default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")

    def rel(p: Path) -> str:
        try:
            return p.relative_to(src).as_posix()
        except ValueError:
            return str(p)

    tasks = [(str(p), list(chains) if chains else None, parser, split_chains) for p in paths]
    entries, sources, failures = [], [], []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), unit="file", desc="parsing", file=sys.stderr, dynamic_ncols=True)

    def consume(p, result):
        ok, payload = result
        if ok:
            entries.extend(payload)
            sources.extend([rel(p)] * len(payload))
        else:
            failures.append((rel(p), payload))
        if bar is not None:
            bar.update(1)

    t_parse = time.perf_counter()
    if workers == 1 or len(tasks) <= 1:
        for p, task in zip(paths, tasks):
            consume(p, _parse_one(task))
    else:
        n_proc = min(workers, len(tasks))
        chunksize = max(1, min(16, len(tasks) // (n_proc * 8)))
        with _pool_context().Pool(n_proc) as pool:
            for p, result in zip(paths, pool.imap(_parse_one, tasks, chunksize=chunksize)):
                consume(p, result)
    parse_seconds = time.perf_counter() - t_parse
    if bar is not None:
        bar.close()

    out_written = None
    if entries:
        out_written = write_cache(entries, out, sources)
    failures_path.parent.mkdir(parents=True, exist_ok=True)
    with open(failures_path, "w", encoding="utf-8") as fh:
        fh.write("path\terror\n")
        for path, error in failures:
            fh.write(f"{path}\t{error}\n")
    return PrepareResult(
        out=out_written,
        failures_path=failures_path,
        num_files=len(tasks),
        num_proteins=len(entries),
        num_residues=sum(len(e["sequence"]) for e in entries),
        failures=failures,
        parse_seconds=parse_seconds,
        total_seconds=time.perf_counter() - t0,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m esmgear_fast.data.prepare",
        description="Parse a folder of PDB/mmCIF files (optionally .gz) into one protein cache file.",
    )
    ap.add_argument("src_dir", help="folder searched recursively for .pdb/.ent/.cif/.mmcif[.gz] files")
    ap.add_argument("out", help="cache file to write (e.g. proteins.pt)")
    ap.add_argument("--workers", type=int, default=None, help="worker processes (default: usable CPUs)")
    ap.add_argument("--chains", nargs="+", default=None, metavar="ID", help="keep only these author chain IDs")
    ap.add_argument("--split-chains", action="store_true", help="store every chain as its own entry")
    ap.add_argument("--parser", choices=("auto", "fast", "biopython"), default="auto",
                    help="PDB reader: fast line reader (auto/fast) or Biopython (default: auto)")
    ap.add_argument("--strict", action="store_true", help="exit with status 1 if any file fails")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)

    src = Path(args.src_dir)
    if not src.is_dir():
        print(f"error: {src} is not a directory", file=sys.stderr)
        return 2
    files = find_structure_files(src)
    if not files:
        print(f"error: no structure files (.pdb/.ent/.cif/.mmcif, optionally .gz) under {src}", file=sys.stderr)
        return 2
    result = prepare(src, args.out, workers=args.workers, chains=args.chains, split_chains=args.split_chains,
                     parser=args.parser, progress=not args.quiet, files=files)

    n_fail = len(result.failures)
    if n_fail:
        print(f"{n_fail} of {result.num_files} file(s) failed (all listed in {result.failures_path}):",
              file=sys.stderr)
        for path, error in result.failures[:10]:
            print(f"  {path}: {error}", file=sys.stderr)
        if n_fail > 10:
            print(f"  ... and {n_fail - 10} more", file=sys.stderr)
    if result.out is not None:
        size_mb = result.out.stat().st_size / 2**20
        print(f"wrote {result.num_proteins} proteins ({result.num_residues} residues) from "
              f"{result.num_files - n_fail}/{result.num_files} files to {result.out} ({size_mb:.1f} MiB)")
    else:
        print("no structure could be parsed; no cache written", file=sys.stderr)
    print(f"parsed {result.num_files} files in {result.parse_seconds:.2f} s: "
          f"{result.structures_per_second:.1f} structures/s "
          f"(total {result.total_seconds:.2f} s incl. writing the cache)")
    if result.out is None or (args.strict and n_fail):
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
