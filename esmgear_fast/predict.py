"""Predictions of a fine-tuned model: ``python -m esmgear_fast.predict`` and :class:`Predictor`.

Command line::

    python -m esmgear_fast.predict INPUT... --checkpoint RUN/checkpoints/best.pt --out predictions.tsv
        [--top-k 5] [--threshold 0.5] [--chains A [B ...]] [--split-chains] [--batch-residues 4096]
        [--workers N] [--device cuda|cpu] [--precision auto|fp32|bf16|fp16] [--overwrite] [--quiet]
    python -m esmgear_fast.predict --pairs pairs.csv --checkpoint MSP/best.pt --out msp.tsv

``INPUT`` as for :mod:`esmgear_fast.embed`. The checkpoint must hold a prediction head (a run of
``python -m esmgear_fast.train``); encoders without one (pre-training checkpoints, published ESM-GearNet
``.pth`` files, encoder specs) are refused with a pointer to ``esmgear_fast.embed``. One TSV row per
protein (columns ``protein``, ``file``, ``chain`` then):

* multi-label heads (EC, GO, custom): ``terms`` and ``scores``, ``;``-separated and aligned, the labels'
  names from the checkpoint (EC numbers, GO ids) with their sigmoid probabilities, best first: the
  ``--top-k`` best (default 5) or, with ``--threshold``, every label scoring at least that (capped by
  ``--top-k`` when given);
* multi-class heads: the same with softmax probabilities;
* regression heads (PSR, custom): one column per target with the predicted (de-normalised) value;
* mutation-stability heads (MSP): ``--pairs CSV`` with columns ``wild_type,mutant`` (structure paths,
  relative to the CSV's folder) and optionally ``name``; one row per pair (``pair``, ``wild_type``,
  ``mutant``, ``probability``: the sigmoid of the stabilisation logit).

Inputs that cannot be read or predicted are listed in ``OUT.failures.tsv``. Exit status: 0 all done,
1 some failed, 2 usage errors. The TSV is written atomically.

Python::

    from esmgear_fast.predict import Predictor
    predictor = Predictor("RUN/checkpoints/best.pt")
    preds = predictor.predict(["structures/"])              # or Proteins / {name: Protein}
    preds.scores                                            # Tensor [B, T]; preds.names, preds.keys
    preds.top(k=5)                                          # [[(term, score), ...] per protein]
"""
from __future__ import annotations

import argparse
import csv
import itertools
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .data.batch import collate
from .embed import DEFAULT_BATCH_RESIDUES, _split_inputs
from .inference import (
    InputError,
    InputFile,
    LoadedModel,
    ParsedProtein,
    Progress,
    atomic_write_text,
    batches_by_residues,
    discover_inputs,
    iter_parsed,
    load_model,
    precision_context,
    proteins_as_parsed,
    renumber,
    resolve_device,
    resolve_precision,
    run_batches,
    write_failures,
)
from .io.protein import Protein

__all__ = ["Predictions", "Predictor", "main", "predict", "prediction_kind", "read_pairs"]

KINDS = ("multilabel", "multiclass", "regression", "mutation")


def prediction_kind(task: nn.Module) -> Optional[str]:
    """``multilabel`` / ``multiclass`` / ``regression`` / ``mutation`` for the task heads of
    :mod:`esmgear_fast.tasks`; ``None`` for anything else (e.g. pre-training methods)."""
    try:
        from .tasks import MultiClassification, MultipleBinaryClassification, MutationStability, PropertyPrediction
    except ImportError:  # pragma: no cover - tasks package missing
        return None
    for cls, kind in ((MultipleBinaryClassification, "multilabel"), (MultiClassification, "multiclass"),
                      (PropertyPrediction, "regression"), (MutationStability, "mutation")):
        if isinstance(task, cls):
            return kind
    return None


def _label_names(task: nn.Module, fallback: Optional[Sequence[str]]) -> List[str]:
    for attr in ("task_names", "class_names"):
        names = getattr(task, attr, None)
        if names is not None:
            return [str(n) for n in names]
    if fallback is not None:
        return [str(n) for n in fallback]
    raise ValueError(f"{type(task).__name__} has no label names")


@dataclass
class Predictions:
    """Scores of one prediction run.

    Attributes:
        kind: ``multilabel`` / ``multiclass`` (``scores`` are probabilities), ``regression`` (values) or
            ``mutation`` (probability that the mutation stabilises).
        names: label / target names (columns of ``scores``).
        keys: one per protein (or pair), rows of ``scores``; ``files``, ``chains`` alongside (for pairs:
            the wild type's and the mutant's file).
        scores: float32 ``[B, T]``.
        failures: ``[(path or key, reason)]``.
    """

    kind: str
    names: List[str]
    keys: List[str] = field(default_factory=list)
    files: List[str] = field(default_factory=list)
    chains: List[str] = field(default_factory=list)
    scores: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0))
    failures: List[Tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.scores[self.keys.index(key)]

    def top(self, k: Optional[int] = 5, threshold: Optional[float] = None) -> List[List[Tuple[str, float]]]:
        """Per row the labels best first: the ``k`` best, or those scoring ``>= threshold`` (at most ``k``
        when both are given). Only for ``multilabel`` / ``multiclass``."""
        if self.kind not in ("multilabel", "multiclass"):
            raise ValueError(f"top terms are for classification heads; this is a {self.kind} head")
        if k is not None and k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        out = []
        for row in self.scores:
            order = torch.argsort(row, descending=True, stable=True).tolist()
            if threshold is not None:
                order = [j for j in order if float(row[j]) >= threshold]
            if k is not None:
                order = order[:k]
            out.append([(self.names[j], float(row[j])) for j in order])
        return out

    def to_tsv(self, path, *, top_k: Optional[int] = 5, threshold: Optional[float] = None) -> None:
        """Writes the table described in the module doc (atomically)."""
        atomic_write_text(path, self.tsv(top_k=top_k, threshold=threshold))

    def tsv(self, *, top_k: Optional[int] = 5, threshold: Optional[float] = None) -> str:
        def clean(x):
            return " ".join(str(x).split())

        lines = []
        if self.kind in ("multilabel", "multiclass"):
            lines.append("protein\tfile\tchain\tterms\tscores")
            for key, f, c, terms in zip(self.keys, self.files, self.chains, self.top(top_k, threshold)):
                lines.append("\t".join([clean(key), clean(f), clean(c), ";".join(t for t, _ in terms),
                                        ";".join(f"{s:.4f}" for _, s in terms)]))
        elif self.kind == "regression":
            lines.append("\t".join(["protein", "file", "chain"] + [clean(n) for n in self.names]))
            for key, f, c, row in zip(self.keys, self.files, self.chains, self.scores.tolist()):
                lines.append("\t".join([clean(key), clean(f), clean(c)] + [f"{v:.8g}" for v in row]))
        else:
            cols = ["probability"] if len(self.names) == 1 else [f"probability[{clean(n)}]" for n in self.names]
            lines.append("\t".join(["pair", "wild_type", "mutant"] + cols))
            for key, f, c, row in zip(self.keys, self.files, self.chains, self.scores.tolist()):
                lines.append("\t".join([clean(key), clean(f), clean(c)] + [f"{v:.4f}" for v in row]))
        return "\n".join(lines) + "\n"


def read_pairs(csv_path) -> List[Tuple[str, str, str]]:
    """``[(name, wild_type path, mutant path)]`` from a CSV with columns ``wild_type``, ``mutant`` and
    optionally ``name`` (default ``"<wild_type>|<mutant>"``); relative paths are relative to the CSV."""
    csv_path = Path(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
            header = rows[0].keys() if rows else []
    except OSError as exc:
        raise InputError(f"cannot read the pairs file {csv_path}: {exc}") from None
    if not rows:
        raise InputError(f"the pairs file {csv_path} has no rows (expected columns wild_type,mutant[,name])")
    missing = [c for c in ("wild_type", "mutant") if c not in header]
    if missing:
        raise InputError(f"the pairs file {csv_path} lacks column(s) {missing}; found {sorted(header)}")
    base = csv_path.parent
    out, seen = [], set()
    for i, r in enumerate(rows, start=2):
        wt, mt = (r.get("wild_type") or "").strip(), (r.get("mutant") or "").strip()
        if not wt or not mt:
            raise InputError(f"{csv_path} line {i}: empty wild_type or mutant")
        name = (r.get("name") or "").strip() or f"{wt}|{mt}"
        if name in seen:
            raise InputError(f"{csv_path} line {i}: duplicate pair name {name!r}")
        seen.add(name)
        resolve = (lambda p: p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p)))
        out.append((name, resolve(wt), resolve(mt)))
    return out


class Predictor:
    """A fine-tuned model ready to predict (see the module doc).

    ``checkpoint``: one of our train checkpoints (file or run folder), a task ``nn.Module`` from
    :mod:`esmgear_fast.tasks`, or a :class:`~esmgear_fast.inference.LoadedModel`.
    """

    def __init__(self, checkpoint, *, device=None, precision: str = "auto"):
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        loaded = load_model(checkpoint, device=self.device)
        kind = prediction_kind(loaded.task) if loaded.task is not None else None
        if kind is None:
            what = loaded.config.get("kind", "model")
            raise ValueError(f"{checkpoint if isinstance(checkpoint, (str, os.PathLike)) else type(checkpoint).__name__}"
                             f" has no prediction head (a {what}: encoder only, e.g. a pre-training checkpoint, "
                             "a published ESM-GearNet .pth or an encoder spec); use python -m esmgear_fast.embed "
                             "for its embeddings, or fine-tune it with python -m esmgear_fast.train")
        self.loaded: LoadedModel = loaded
        self.task = loaded.task
        self.kind = kind
        self.names = _label_names(self.task, loaded.task_names)

    # ------------------------------------------------------------------ scoring
    def _scores(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if logits.dim() == 1:
            logits = logits.unsqueeze(1)
        if self.kind in ("multilabel", "mutation"):
            return torch.sigmoid(logits)
        if self.kind == "multiclass":
            return torch.softmax(logits, dim=-1)
        return logits

    def _run(self, inputs: Dict[str, Any]) -> torch.Tensor:
        with torch.inference_mode(), precision_context(self.precision, self.device):
            out = self.task.predict({k: v.to(self.device) for k, v in inputs.items()})
        return self._scores(out).cpu()

    def predict(self, paths_or_proteins, *, batch_residues: int = DEFAULT_BATCH_RESIDUES, chains=None,
                split_chains: bool = False, workers: Optional[int] = 0, progress: bool = False,
                files: Optional[Sequence[InputFile]] = None) -> Predictions:
        """Scores for structure files / folders / globs / list files and/or :class:`Protein` objects
        (single-protein heads). Unreadable inputs are in ``.failures`` (with a warning)."""
        if self.kind == "mutation":
            raise ValueError("this is a mutation-stability (MSP) head: give wild-type/mutant pairs to "
                             "predict_pairs() (CLI: --pairs pairs.csv)")
        paths, proteins = _split_inputs(paths_or_proteins)
        if files is None:
            files = discover_inputs(paths) if paths else []
        failures: List[Tuple[str, str]] = []
        bar = Progress(len(files), progress, "predicting")
        items = renumber(itertools.chain(
            proteins_as_parsed(proteins) if proteins else [],
            iter_parsed(files, chains=chains, split_chains=split_chains, workers=workers, failures=failures,
                        on_file=bar.file_parsed)))
        preds = Predictions(self.kind, list(self.names))
        rows = []
        try:
            for batch_items, scores in run_batches(
                    batches_by_residues(items, batch_residues),
                    lambda its: self._run({"protein": collate([it.protein for it in its])}), failures,
                    on_failed=bar.failed):
                bar.done(batch_items)
                for it, row in zip(batch_items, scores):
                    rows.append((it.index, it.key, it.file, it.chain, row))
        finally:
            bar.close()
        return self._finish(preds, rows, failures)

    def predict_pairs(self, pairs, *, batch_residues: int = DEFAULT_BATCH_RESIDUES, chains=None,
                      workers: Optional[int] = 0, progress: bool = False) -> Predictions:
        """Mutation-stability scores for ``pairs``: a CSV path (see :func:`read_pairs`), or a list of
        ``(wild_type, mutant)`` / ``(name, wild_type, mutant)`` with paths or :class:`Protein` objects."""
        if self.kind != "mutation":
            raise ValueError(f"pairs are for mutation-stability heads; this is a {self.kind} head")
        if isinstance(pairs, (str, os.PathLike)):
            pairs = read_pairs(pairs)
        norm = []
        for i, p in enumerate(pairs):
            p = tuple(p)
            if len(p) == 2:
                wt, mt = p
                name = (f"{wt}|{mt}" if not isinstance(wt, Protein) else f"{wt.name}|{mt.name}")
            elif len(p) == 3:
                name, wt, mt = p
            else:
                raise ValueError(f"pair {i}: expected (wild_type, mutant) or (name, wild_type, mutant)")
            norm.append((str(name), wt, mt))
        names = [n for n, _, _ in norm]
        if len(set(names)) != len(names):
            raise ValueError("pair names must be unique")
        # parse every distinct file once (in worker processes), then assemble the pairs
        paths = sorted({os.fspath(x) for _, wt, mt in norm for x in (wt, mt) if not isinstance(x, Protein)})
        files = [InputFile(Path(p), os.path.normpath(p)) for p in paths]
        failures: List[Tuple[str, str]] = []
        parsed: Dict[str, Protein] = {}
        bar = Progress(len(files), progress, "parsing")
        try:
            for it in iter_parsed(files, chains=chains, workers=workers, failures=failures, on_file=bar.file_parsed):
                parsed[it.file] = it.protein
                bar.done([it])
        finally:
            bar.close()
        file_errors = dict(failures)
        failures = []
        items = []
        for index, (name, wt, mt) in enumerate(norm):
            sides = []
            for x in (wt, mt):
                if isinstance(x, Protein):
                    sides.append((x.name, x))
                else:
                    key = os.path.normpath(os.fspath(x))
                    sides.append((key, parsed.get(key)))
            bad = [f"{k}: {file_errors.get(k, 'not parsed')}" for k, p in sides if p is None]
            if bad:
                failures.append((name, "; ".join(bad)))
                continue
            pair = _Pair(sides[0][1], sides[1][1])
            items.append(ParsedProtein(name, f"{sides[0][0]}\t{sides[1][0]}", "", pair, index))
        rows = []

        def run(its):
            return self._run({"wild_type": collate([it.protein.wild_type for it in its]),
                              "mutant": collate([it.protein.mutant for it in its])})

        for batch_items, scores in run_batches(batches_by_residues(items, batch_residues), run, failures):
            for it, row in zip(batch_items, scores):
                wt_file, mt_file = it.file.split("\t")
                rows.append((it.index, it.key, wt_file, mt_file, row))
        return self._finish(Predictions(self.kind, list(self.names)), rows, failures)

    def _finish(self, preds: Predictions, rows, failures) -> Predictions:
        rows.sort(key=lambda r: r[0])  # input order
        preds.keys = [r[1] for r in rows]
        preds.files = [r[2] for r in rows]
        preds.chains = [r[3] for r in rows]
        preds.scores = (torch.stack([r[4] for r in rows]) if rows else torch.zeros(0, len(self.names)))
        preds.failures = failures
        if failures:
            warnings.warn(f"{len(failures)} input(s) could not be predicted (see .failures), first: "
                          f"{failures[0][0]}: {failures[0][1]}", stacklevel=3)
        return preds


class _Pair:
    """A wild-type/mutant pair posing as a protein for the residue-count batcher (its length = both sides)."""

    def __init__(self, wild_type: Protein, mutant: Protein):
        self.wild_type, self.mutant = wild_type, mutant

    def __len__(self) -> int:
        return len(self.wild_type) + len(self.mutant)


def predict(paths_or_proteins, checkpoint, **kwargs) -> Predictions:
    """``Predictor(checkpoint).predict(paths_or_proteins, **kwargs)`` (``device``/``precision`` go to the
    predictor)."""
    opts = {k: kwargs.pop(k) for k in ("device", "precision") if k in kwargs}
    return Predictor(checkpoint, **opts).predict(paths_or_proteins, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m esmgear_fast.predict",
                                 description="Predict EC/GO terms, PSR scores or MSP stability with a fine-tuned "
                                             "ESM-GearNet checkpoint.")
    ap.add_argument("inputs", nargs="*", metavar="INPUT",
                    help="structure files, folders (recursive), glob patterns or .txt/.list files of paths")
    ap.add_argument("--pairs", metavar="CSV", help="MSP: wild_type,mutant[,name] pairs of structure paths")
    ap.add_argument("--checkpoint", "-c", required=True, help="a fine-tuned checkpoint (RUN/checkpoints/best.pt)")
    ap.add_argument("--out", "-o", required=True, help="output TSV")
    ap.add_argument("--top-k", type=int, default=None,
                    help="labels per protein for classification heads (default 5, or all above --threshold)")
    ap.add_argument("--threshold", type=float, default=None, help="keep labels scoring at least this")
    ap.add_argument("--chains", nargs="+", default=None, metavar="ID", help="keep only these author chain IDs")
    ap.add_argument("--split-chains", action="store_true", help="predict every chain on its own")
    ap.add_argument("--batch-residues", type=int, default=DEFAULT_BATCH_RESIDUES)
    ap.add_argument("--workers", type=int, default=None, help="parser processes (default: usable CPUs - 1)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    out = Path(args.out)
    t0 = time.perf_counter()
    try:
        if out.exists() and not args.overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
        if args.top_k is not None and args.top_k < 1:
            raise ValueError("--top-k must be >= 1")
        if bool(args.inputs) == bool(args.pairs):
            raise InputError("give structure INPUTs, or --pairs CSV for a mutation-stability model (not both)")
        files = discover_inputs(args.inputs) if args.inputs else None
        pairs = read_pairs(args.pairs) if args.pairs else None
        if args.pairs and args.split_chains:
            raise InputError("--split-chains does not apply to --pairs (each pair is two whole structures; "
                             "use --chains to pick the chains of both)")
        predictor = Predictor(args.checkpoint, device=args.device, precision=args.precision)
        if predictor.kind not in ("multilabel", "multiclass") and (args.top_k is not None or
                                                                 args.threshold is not None):
            raise InputError(f"--top-k/--threshold select labels of classification heads; this checkpoint has a "
                             f"{predictor.kind} head")
        warnings.filterwarnings("ignore", message=".*could not be predicted")  # reported below instead
        if pairs is not None:
            preds = predictor.predict_pairs(pairs, batch_residues=args.batch_residues, chains=args.chains,
                                            workers=args.workers, progress=not args.quiet)
        else:
            preds = predictor.predict(args.inputs, batch_residues=args.batch_residues, chains=args.chains,
                                      split_chains=args.split_chains, workers=args.workers,
                                      progress=not args.quiet, files=files)
    except (InputError, FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    top_k = args.top_k if (args.top_k is not None or args.threshold is not None) else 5
    preds.to_tsv(out, top_k=top_k, threshold=args.threshold)
    failures_path = out.with_name(out.name + ".failures.tsv")
    write_failures(failures_path, preds.failures)
    if preds.failures:
        print(f"{len(preds.failures)} input(s) failed (all listed in {failures_path}):", file=sys.stderr)
        for path, reason in preds.failures[:10]:
            print(f"  {path}: {reason}", file=sys.stderr)
    seconds = time.perf_counter() - t0
    print(f"predicted {len(preds)} {'pairs' if predictor.kind == 'mutation' else 'proteins'} "
          f"({predictor.kind}, {len(predictor.names)} label(s)) into {out} in {seconds:.1f} s; "
          f"{len(preds.failures)} failed")
    return 1 if preds.failures else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
