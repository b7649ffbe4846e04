"""Embeddings of your own structures: ``python -m esmgear_fast.embed`` and :func:`embed`.

Command line::

    python -m esmgear_fast.embed INPUT... --checkpoint CKPT --out FILE.{h5,npz,pt}
        [--per-residue] [--chains A [B ...]] [--split-chains] [--batch-residues 4096] [--workers N]
        [--device cuda|cpu] [--precision auto|fp32|bf16|fp16] [--fusion serial] [--overwrite] [--quiet]

* ``INPUT``: structure files (PDB/mmCIF, optionally ``.gz``), folders (recursive), glob patterns, or text
  files of paths (``.txt``/``.list``/``.lst``); see :mod:`esmgear_fast.inference`.
* ``CKPT``: a train/pretrain checkpoint of this package, a published ESM-GearNet ``.pth`` (``--fusion``
  checks its fusion; inferred by default), a ``ModelConfig`` YAML file, or an encoder spec such as
  ``"esm=esm2_t33_650M_UR50D,structure=none"`` (ESM-only) or ``"esm=random:tiny,structure=gearnet"``.
* Output: per-protein embeddings (``graph_feature [B, D]``) and with ``--per-residue`` per-residue ones
  (``node_feature [N, D]`` + ``ptr``), keyed ``"<file>:<chains>"``, with the model config and package
  version as metadata (layout: :class:`esmgear_fast.inference.EmbeddingWriter`; read back with
  :func:`esmgear_fast.inference.load_embeddings`, h5py or NumPy). The file appears only when complete.
* Files that cannot be read (and proteins the model fails on) are listed in ``FILE.failures.tsv``
  (``path``, ``reason``); the others are embedded.

Exit status: 0 all embedded; 1 some (or all) inputs failed; 2 usage errors (no inputs, output exists
without ``--overwrite``, bad checkpoint).

Python::

    from esmgear_fast.embed import embed
    emb = embed(["structures/", Protein.from_arrays(seq, ca, name="design1")], "RUN/checkpoints/best.pt")
    emb["structures/1abc.pdb:A"]        # Tensor[D]; emb.residues with per_residue=True; emb.failures
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .data.batch import collate
from .inference import (
    Embeddings,
    EmbeddingWriter,
    InputError,
    LoadedModel,
    ParsedProtein,
    Progress,
    batches_by_residues,
    discover_inputs,
    encode_batch,
    format_from_path,
    iter_parsed,
    load_model,
    proteins_as_parsed,
    renumber,
    resolve_device,
    resolve_precision,
    run_batches,
    write_failures,
)
from .io.protein import Protein

__all__ = ["EmbedReport", "embed", "embed_to_file", "main"]

DEFAULT_BATCH_RESIDUES = 4096


def _split_inputs(paths_or_proteins) -> Tuple[list, list]:
    """(paths, proteins-or-mapping) from the many accepted input forms."""
    if isinstance(paths_or_proteins, Protein):
        return [], [paths_or_proteins]
    if isinstance(paths_or_proteins, Mapping):
        return [], paths_or_proteins
    if isinstance(paths_or_proteins, (str, os.PathLike)):
        return [paths_or_proteins], []
    paths, proteins = [], []
    for x in paths_or_proteins:
        if isinstance(x, Protein):
            proteins.append(x)
        elif isinstance(x, (str, os.PathLike)):
            paths.append(x)
        else:
            raise TypeError(f"inputs must be paths or Protein objects, got {type(x).__name__}")
    if not paths and not proteins:
        raise InputError("no input given")
    return paths, proteins


def _iter_embedded(paths, proteins, loaded: LoadedModel, *, per_residue: bool, batch_residues: int,
                   chains, split_chains: bool, device, precision: str, workers, failures, progress: Progress,
                   files=None) -> Iterator[Tuple[List[ParsedProtein], torch.Tensor, Optional[torch.Tensor]]]:
    if files is None:
        files = discover_inputs(paths) if paths else []
    items = renumber(itertools.chain(
        proteins_as_parsed(proteins) if proteins else [],
        iter_parsed(files, chains=chains, split_chains=split_chains, workers=workers, failures=failures,
                    on_file=progress.file_parsed),
    ))
    encoder = loaded.encoder

    def run(batch_items):
        return encode_batch(encoder, collate([it.protein for it in batch_items]), device, precision)

    for batch_items, (graph, node) in run_batches(batches_by_residues(items, batch_residues), run, failures,
                                                  on_failed=progress.failed):
        progress.done(batch_items)
        yield batch_items, graph, (node if per_residue else None)


def embed(paths_or_proteins, model, per_residue: bool = False, batch_residues: int = DEFAULT_BATCH_RESIDUES, *,
          chains: Optional[Sequence[str]] = None, split_chains: bool = False, device=None,
          precision: str = "auto", workers: Optional[int] = 0, progress: bool = False,
          fusion: Optional[str] = None) -> Embeddings:
    """Embeds structures and/or :class:`Protein` objects; returns :class:`~esmgear_fast.inference.Embeddings`
    (``{key: Tensor[D]}``, plus ``.residues`` with ``per_residue=True``, ``.failures`` and ``.metadata``).

    Args:
        paths_or_proteins: a path / folder / glob / list file, a :class:`Protein`, a list mixing them, or a
            ``{key: Protein}`` dict. Files are keyed ``"<file>:<chains>"``, proteins by name (or dict key).
        model: a checkpoint path, an encoder spec, an ``nn.Module`` or a :func:`~esmgear_fast.inference.load_model`
            result (pass the latter to reuse a loaded model across calls).
        per_residue: also return ``[L, D]`` per-residue embeddings.
        batch_residues: residues per model call.
        chains / split_chains: keep only these chain IDs / embed each chain on its own.
        device: default CUDA when available; precision: ``auto`` (bf16 on CUDA, fp32 on CPU), fp32, bf16, fp16.
        workers: parser processes (default 0 = parse in this process; the CLI uses several).

    Files that cannot be read do not raise: they are in ``.failures`` (and a warning says how many).
    """
    paths, proteins = _split_inputs(paths_or_proteins)
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    loaded = load_model(model, device=device, fusion=fusion)
    out = Embeddings()
    out.metadata = {"config": loaded.config, "precision": precision, "device": str(device)}
    failures: List[Tuple[str, str]] = []
    files = discover_inputs(paths) if paths else []
    bar = Progress(len(files), progress, "embedding")
    try:
        for items, graph, node in _iter_embedded(paths, proteins, loaded, per_residue=per_residue,
                                                 batch_residues=batch_residues, chains=chains,
                                                 split_chains=split_chains, device=device, precision=precision,
                                                 workers=workers, failures=failures, progress=bar, files=files):
            offsets = [0]
            for it in items:
                offsets.append(offsets[-1] + len(it.protein))
            for i, it in enumerate(items):
                res = node[offsets[i]:offsets[i + 1]].clone() if node is not None else None
                out._add(it.key, it.file, it.chain, it.protein.sequence, graph[i].clone(), res)
    finally:
        bar.close()
    if per_residue and out.residues is None:
        out.residues = {}
    out.failures = failures
    if failures:
        warnings.warn(f"{len(failures)} input(s) could not be embedded (see .failures), first: "
                      f"{failures[0][0]}: {failures[0][1]}", stacklevel=2)
    return out


@dataclass
class EmbedReport:
    """What :func:`embed_to_file` did."""

    out: Optional[Path]
    failures_path: Path
    num_files: int
    num_proteins: int
    num_residues: int
    failures: List[Tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def proteins_per_second(self) -> float:
        return self.num_proteins / self.seconds if self.seconds > 0 else float("inf")


def embed_to_file(paths_or_proteins, model, out, *, per_residue: bool = False,
                  batch_residues: int = DEFAULT_BATCH_RESIDUES, fmt: Optional[str] = None, overwrite: bool = False,
                  chains=None, split_chains: bool = False, device=None, precision: str = "auto",
                  workers: Optional[int] = None, progress: bool = True, fusion: Optional[str] = None,
                  files=None) -> EmbedReport:
    """Embeds into ``out`` (``.h5``/``.npz``/``.pt``), written atomically, failures in ``out.failures.tsv``.

    Refuses an existing ``out`` unless ``overwrite``. No output file is written when nothing could be
    embedded (``report.out`` is ``None``)."""
    t0 = time.perf_counter()
    out = Path(out)
    fmt = format_from_path(out, fmt)
    failures_path = out.with_name(out.name + ".failures.tsv")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    paths, proteins = _split_inputs(paths_or_proteins)
    if files is None:
        files = discover_inputs(paths) if paths else []
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    loaded = load_model(model, device=device, fusion=fusion)
    failures: List[Tuple[str, str]] = []
    metadata = {"config": loaded.config, "precision": precision, "device": str(device)}
    bar = Progress(len(files), progress, "embedding")
    writer = EmbeddingWriter(out, fmt=fmt, per_residue=per_residue, metadata=metadata, overwrite=overwrite)
    written = None
    try:
        for items, graph, node in _iter_embedded(paths, proteins, loaded, per_residue=per_residue,
                                                 batch_residues=batch_residues, chains=chains,
                                                 split_chains=split_chains, device=device, precision=precision,
                                                 workers=workers, failures=failures, progress=bar, files=files):
            writer.add(items, graph, node)
        if len(writer):
            writer.metadata["num_failures"] = len(failures)
            written = writer.close()
        else:
            writer.abort()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    write_failures(failures_path, failures)
    return EmbedReport(out=written, failures_path=failures_path, num_files=len(files),
                       num_proteins=bar.proteins, num_residues=bar.residues, failures=failures,
                       seconds=time.perf_counter() - t0)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m esmgear_fast.embed",
        description="Embed PDB/mmCIF structures (optionally .gz) with an ESM-GearNet model.",
    )
    ap.add_argument("inputs", nargs="+", metavar="INPUT",
                    help="structure files, folders (recursive), glob patterns or .txt/.list files of paths")
    ap.add_argument("--checkpoint", "-c", required=True, metavar="CKPT",
                    help="train/pretrain checkpoint, published ESM-GearNet .pth, ModelConfig .yaml, or an "
                         "encoder spec like 'esm=random:tiny,structure=gearnet,fusion=serial'")
    ap.add_argument("--out", "-o", required=True, metavar="FILE", help="output file: .h5, .npz or .pt")
    ap.add_argument("--format", choices=("auto", "h5", "npz", "pt"), default="auto",
                    help="output format (default: from the --out suffix)")
    ap.add_argument("--per-residue", action="store_true", help="also write per-residue embeddings")
    ap.add_argument("--chains", nargs="+", default=None, metavar="ID", help="keep only these author chain IDs")
    ap.add_argument("--split-chains", action="store_true", help="embed every chain on its own")
    ap.add_argument("--batch-residues", type=int, default=DEFAULT_BATCH_RESIDUES,
                    help=f"residues per model call (default {DEFAULT_BATCH_RESIDUES})")
    ap.add_argument("--workers", type=int, default=None,
                    help="parser processes (default: usable CPUs - 1; 0 parses in the main process)")
    ap.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                    help="autocast precision (default auto: bf16 on CUDA, fp32 on CPU); outputs are float32")
    ap.add_argument("--fusion", choices=("serial", "parallel", "cross"), default=None,
                    help="expected fusion of a published ESM-GearNet .pth (default: inferred from its weights)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def _report_failures(failures, failures_path, num_files):
    if not failures:
        return
    print(f"{len(failures)} input(s) failed (all listed in {failures_path}):", file=sys.stderr)
    for path, reason in failures[:10]:
        print(f"  {path}: {reason}", file=sys.stderr)
    if len(failures) > 10:
        print(f"  ... and {len(failures) - 10} more", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    try:
        format_from_path(out, args.format)
        if out.exists() and not args.overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
        files = discover_inputs(args.inputs)
        report = embed_to_file(args.inputs, args.checkpoint, out, per_residue=args.per_residue,
                               batch_residues=args.batch_residues, fmt=args.format, overwrite=args.overwrite,
                               chains=args.chains, split_chains=args.split_chains, device=args.device,
                               precision=args.precision, workers=args.workers, progress=not args.quiet,
                               fusion=args.fusion, files=files)
    except (InputError, FileExistsError, FileNotFoundError, IsADirectoryError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _report_failures(report.failures, report.failures_path, report.num_files)
    if report.out is None:
        print(f"no protein could be embedded; no output written (failures in {report.failures_path})",
              file=sys.stderr)
        return 1
    print(f"embedded {report.num_proteins} proteins ({report.num_residues} residues) from "
          f"{report.num_files - len({p for p, _ in report.failures})}/{report.num_files} files into {report.out} "
          f"in {report.seconds:.1f} s ({report.proteins_per_second:.2f} proteins/s); "
          f"{len(report.failures)} failed")
    return 1 if report.failures else 0


class _CallableModule(type(sys)):
    """Makes the module itself callable as :func:`embed`, so ``esmgear_fast.embed(paths, model)`` works whether
    ``esmgear_fast.embed`` resolves to this module or to the function (the package exports it lazily, which
    keeps ``python -m esmgear_fast.embed`` free of runpy's "found in sys.modules" warning)."""

    def __call__(self, *args, **kwargs):
        return embed(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
