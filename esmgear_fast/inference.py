"""Shared machinery of :mod:`esmgear_fast.embed` and :mod:`esmgear_fast.predict`.

* **Input discovery** (:func:`discover_inputs`): structure files (``.pdb .ent .cif .mmcif``, each optionally
  ``.gz``), folders (searched recursively), glob patterns (``**`` allowed) and text files of paths (``.txt``,
  ``.list``, ``.lst``: one path per line, blank lines and ``#`` comments ignored, relative paths relative to
  the list file's folder). Every protein gets a key ``"<file>:<chains>"`` where ``<file>`` is the path as
  given (folder inputs: the folder as given joined with the path below it) and ``<chains>`` the
  comma-separated chain IDs of the embedded residues.
* **Parallel parsing overlapped with the model** (:func:`iter_parsed`): worker processes parse files while
  the main process runs the model; at most ``4 * workers`` files are parsed ahead, so memory stays bounded
  however slow the model is.
* **Length-aware batching** (:func:`batches_by_residues`): proteins are buffered, sorted by length and packed
  into batches of at most ``batch_residues`` residues (a longer protein forms a batch of its own).
* **Model resolution** (:func:`load_model`): one of our train/pretrain checkpoints (``load_task``), a
  published ESM-GearNet ``.pth`` (``load_esm_gearnet``), a ``ModelConfig`` YAML file, an encoder spec string
  such as ``"esm=random:tiny,structure=gearnet,fusion=serial,hidden_dims=[64,64]"`` (random structure weights
  drawn with ``seed`` (key ``seed=``, default 0), so a spec always gives the same model; ``structure=none`` for
  ESM-only use), or an ``nn.Module`` (an encoder returning ``{"node_feature", "graph_feature"}``
  from a :class:`~esmgear_fast.data.ProteinBatch`, or a task with a ``model`` attribute and ``predict``).
* **Atomic output files** (:class:`EmbeddingWriter`, :func:`atomic_write_text`): data is written to a
  hidden ``.<name>.partial-<pid>`` file in the output folder, flushed, fsynced and renamed over the target only
  when complete; HDF5 files also carry ``complete = True`` as their last attribute and
  :func:`load_embeddings` refuses files without it. A killed run leaves at most the hidden partial file.
"""
from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import sys
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .data.batch import ProteinBatch, collate
from .data.prepare import _default_workers, _error_text, _pool_context, find_structure_files
from .io.protein import Protein
from .io.structure import arrays_to_protein, is_structure_file, read_structure_arrays

__all__ = [
    "EMBEDDING_FORMATS",
    "Embeddings",
    "EmbeddingWriter",
    "InputFile",
    "InputError",
    "LoadedModel",
    "ParsedProtein",
    "atomic_write_text",
    "batches_by_residues",
    "discover_inputs",
    "encode_batch",
    "format_from_path",
    "iter_parsed",
    "load_embeddings",
    "load_model",
    "parse_model_spec",
    "precision_context",
    "proteins_as_parsed",
    "renumber",
    "write_failures",
]

PathLike = Union[str, os.PathLike]
LIST_SUFFIXES = (".txt", ".list", ".lst")
EMBEDDING_FORMATS = ("h5", "npz", "pt")
FILE_FORMAT_TAG = "esmgear_fast.embeddings"
FILE_FORMAT_VERSION = 1
_GLOB_CHARS = set("*?[")


class InputError(ValueError):
    """A problem with the inputs as a whole (nothing to do, an input that does not exist, ...): a usage error."""


# ============================================================================ input discovery
@dataclass(frozen=True)
class InputFile:
    """A structure file to read: ``path`` on disk and ``display``, the name used in keys and reports."""

    path: Path
    display: str


def _is_glob(text: str) -> bool:
    return any(c in _GLOB_CHARS for c in text)


def _expand_folder(folder: Path, shown: str) -> List[InputFile]:
    files = find_structure_files(folder)
    if not files:
        raise InputError(f"no structure files (.pdb/.ent/.cif/.mmcif, optionally .gz) under folder {shown}")
    return [InputFile(p, os.path.normpath(os.path.join(shown, p.relative_to(folder).as_posix()))) for p in files]


def _read_list_file(path: Path, shown: str) -> List[Tuple[str, Path]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the list of paths {shown}: {exc}") from None
    base = path.parent
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line)
        entries.append((line, p if p.is_absolute() else base / p))
    if not entries:
        raise InputError(f"the list of paths {shown} names no file")
    return entries


def discover_inputs(inputs: Sequence[PathLike]) -> List[InputFile]:
    """Structure files named by ``inputs`` (files, folders, globs, list files), in order, duplicates removed.

    Raises :class:`InputError` for a path that does not exist (and is not a glob), a glob or folder without
    structure files, a file that is neither a structure file nor a list of paths, or no input at all.
    Entries of a list file that do not exist are *not* errors here: they are returned and fail when read
    (so they appear in the failure report with the other unreadable files).
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise InputError("no input given")
    found: List[InputFile] = []

    def add_arg(text: str, path: Path, from_list: bool = False):
        if path.is_dir():
            found.extend(_expand_folder(path, text))
        elif path.is_file():
            if is_structure_file(path):
                found.append(InputFile(path, os.path.normpath(text)))
            elif path.name.lower().endswith(LIST_SUFFIXES) and not from_list:
                for entry_text, entry_path in _read_list_file(path, text):
                    add_arg(entry_text, entry_path, from_list=True)
            elif from_list:
                found.append(InputFile(path, os.path.normpath(text)))  # fails when read, with the reason
            else:
                raise InputError(f"{text} is neither a structure file (.pdb .ent .cif .mmcif, optionally .gz) "
                                 f"nor a list of paths ({' '.join(LIST_SUFFIXES)})")
        elif from_list:
            found.append(InputFile(path, os.path.normpath(text)))  # missing: reported as a failure later
        elif _is_glob(text):
            matches = sorted(glob.glob(text, recursive=True))
            before = len(found)
            for m in matches:
                mp = Path(m)
                if mp.is_dir():
                    with contextlib.suppress(InputError):  # an empty matched folder is not an error by itself
                        found.extend(_expand_folder(mp, m))
                elif mp.is_file() and is_structure_file(mp):
                    found.append(InputFile(mp, os.path.normpath(m)))
            if len(found) == before:
                raise InputError(f"the pattern {text} matches no structure file")
        else:
            raise InputError(f"{text}: no such file or folder")

    for item in inputs:
        add_arg(os.fspath(item), Path(os.fspath(item)))
    seen, unique = set(), []
    for f in found:
        try:
            ident = f.path.resolve()
        except OSError:  # pragma: no cover - broken symlink loops
            ident = f.path
        if ident not in seen:
            seen.add(ident)
            unique.append(f)
    return unique


# ============================================================================ parsing
@dataclass
class ParsedProtein:
    """One protein ready for the model: its key, the file it came from ("" for in-memory proteins),
    the comma-joined chain IDs, and the :class:`Protein`; ``index`` is its input order."""

    key: str
    file: str
    chain: str
    protein: Protein
    index: int = 0


def _parse_task(task):
    """Worker: ``(ok, payload)``; payload = list of arrays dicts (one per protein) or an error string."""
    path, chains, split = task
    try:
        arrays = read_structure_arrays(path, chains)
        if not split:
            return True, [arrays]
        from .data.prepare import split_arrays_by_chain

        return True, split_arrays_by_chain(arrays)
    except Exception as exc:  # noqa: BLE001 - every failure is reported, none is fatal
        return False, _error_text(exc)


def _bounded_imap(fn, tasks: Sequence, workers: int, ahead: int) -> Iterator:
    """``map(fn, tasks)`` in order, computed by ``workers`` processes at most ``ahead`` tasks in advance."""
    if workers <= 0 or len(tasks) <= 1:
        for t in tasks:
            yield fn(t)
        return
    with _pool_context().Pool(min(workers, len(tasks))) as pool:
        pending = deque()
        it = iter(tasks)
        for t in it:
            pending.append(pool.apply_async(fn, (t,)))
            if len(pending) >= ahead:
                break
        while pending:
            result = pending.popleft().get()
            for t in it:
                pending.append(pool.apply_async(fn, (t,)))
                break
            yield result


def iter_parsed(files: Sequence[InputFile], *, chains: Optional[Sequence[str]] = None, split_chains: bool = False,
                workers: Optional[int] = None, failures: Optional[List[Tuple[str, str]]] = None,
                on_file: Optional[Callable[[InputFile, int], None]] = None) -> Iterator[ParsedProtein]:
    """Parses ``files`` in worker processes (``workers=0``: in this process) and yields their proteins in
    input order. Files that fail are appended to ``failures`` as ``(display path, reason)`` and skipped.
    ``on_file(file, number_of_proteins)`` is called once per file (0 proteins for a failure)."""
    workers = max(1, _default_workers() - 1) if workers is None else int(workers)
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    tasks = [(str(f.path), list(chains) if chains else None, bool(split_chains)) for f in files]
    index = 0
    for f, (ok, payload) in zip(files, _bounded_imap(_parse_task, tasks, workers, ahead=4 * max(1, workers))):
        if not ok:
            if failures is not None:
                failures.append((f.display, payload))
            if on_file is not None:
                on_file(f, 0)
            continue
        n = 0
        for arrays in payload:
            try:
                protein = arrays_to_protein(arrays)
            except Exception as exc:  # noqa: BLE001
                if failures is not None:
                    failures.append((f.display, _error_text(exc)))
                continue
            chain = ",".join(protein.chain_names)
            yield ParsedProtein(f"{f.display}:{chain}", f.display, chain, protein, index)
            index += 1
            n += 1
        if on_file is not None:
            on_file(f, n)


def proteins_as_parsed(proteins: Union[Sequence[Protein], Mapping[str, Protein]]) -> List[ParsedProtein]:
    """In-memory proteins as :class:`ParsedProtein` items keyed by the mapping key or ``protein.name``."""
    if isinstance(proteins, Mapping):
        items = list(proteins.items())
    else:
        items = [(p.name, p) for p in proteins]
    keys = [k for k, _ in items]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(f"several proteins share the name(s) {dup[:5]}: give each a distinct name "
                         "(Protein.from_arrays(..., name=...)) or pass a dict {key: protein}")
    out = []
    for i, (k, p) in enumerate(items):
        if not isinstance(p, Protein):
            raise TypeError(f"expected Protein objects, got {type(p).__name__} for {k!r}")
        out.append(ParsedProtein(str(k), "", ",".join(p.chain_names), p, i))
    return out


def renumber(items: Iterable[ParsedProtein]) -> Iterator[ParsedProtein]:
    """Sets ``index`` to the position in ``items`` (input order across several sources)."""
    for i, it in enumerate(items):
        it.index = i
        yield it


def batches_by_residues(items: Iterable[ParsedProtein], batch_residues: int,
                        buffer_residues: Optional[int] = None) -> Iterator[List[ParsedProtein]]:
    """Groups proteins into batches of at most ``batch_residues`` residues (longest first within a buffer of
    about ``buffer_residues`` residues, default ``8 * batch_residues``); a protein longer than the budget
    is a batch of its own."""
    batch_residues = int(batch_residues)
    if batch_residues < 1:
        raise ValueError(f"batch_residues must be >= 1, got {batch_residues}")
    buffer_residues = 8 * batch_residues if buffer_residues is None else int(buffer_residues)

    def flush(buf):
        buf.sort(key=lambda it: (-len(it.protein), it.index))
        batch, size = [], 0
        for it in buf:
            n = len(it.protein)
            if batch and size + n > batch_residues:
                yield batch
                batch, size = [], 0
            batch.append(it)
            size += n
        if batch:
            yield batch

    buf, size = [], 0
    for it in items:
        buf.append(it)
        size += len(it.protein)
        if size >= buffer_residues:
            yield from flush(buf)
            buf, size = [], 0
    if buf:
        yield from flush(buf)


# ============================================================================ models
@dataclass
class LoadedModel:
    """What :func:`load_model` resolved.

    Attributes:
        encoder: maps a :class:`ProteinBatch` to ``{"node_feature": [N, D], "graph_feature": [B, D]}``.
        task: the task module (``task.model`` is ``encoder``) of a train/pretrain checkpoint or a task module
            given directly, else ``None``; :mod:`esmgear_fast.predict` checks it has a prediction head.
        config: JSON-serialisable description stored as metadata (source, kind, model/run config).
        task_names: label names of a fine-tuned checkpoint (EC numbers, GO ids, ...), else ``None``.
    """

    encoder: nn.Module
    task: Optional[nn.Module]
    config: Dict[str, Any]
    task_names: Optional[List[str]] = None

    def to(self, device) -> "LoadedModel":
        (self.task if self.task is not None else self.encoder).to(device)
        return self

    @property
    def device(self) -> torch.device:
        for p in self.encoder.parameters():
            return p.device
        return torch.device("cpu")


def _split_top_level(text: str) -> List[str]:
    parts, depth, cur = [], 0, []
    for c in text:
        if c in "[{(":
            depth += 1
        elif c in "]})":
            depth -= 1
        if c == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def parse_model_spec(spec: str) -> Dict[str, Any]:
    """``"esm=random:tiny,structure=gearnet,hidden_dims=[64,64]"`` -> ``{"esm": "random:tiny", ...}``.

    Values are read as YAML scalars/lists (``none``/``null`` -> ``None``, ``[64,64]`` -> a list); ``esm``
    values stay strings (``random:tiny`` is not a YAML mapping)."""
    import yaml

    out: Dict[str, Any] = {}
    for part in _split_top_level(spec):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ValueError(f"model spec {spec!r}: {part!r} is not key=value")
        value = value.strip()
        if value.lower() in ("none", "null", "~", ""):
            out[key] = None
        elif key == "esm":
            out[key] = value
        else:
            out[key] = yaml.safe_load(value)
    return out


def _model_config_from(fields: Mapping[str, Any], source: str):
    from .models.factory import ModelConfig

    if not isinstance(fields, Mapping):
        raise ValueError(f"{source}: expected a mapping of ModelConfig fields, got {type(fields).__name__}")
    try:
        return ModelConfig.from_dict(dict(fields))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"invalid model configuration in {source}: {exc}") from None


def _config_dict(cfg) -> Dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)


def _peek_checkpoint(path: Path):
    """The checkpoint's top-level object, memory-mapped where possible (``weights_only`` always)."""
    def unreadable(exc):
        first = str(exc).splitlines()[0] if str(exc) else ""
        return ValueError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {first}); expected an "
                          "esmgear_fast checkpoint, a published ESM-GearNet .pth, a ModelConfig .yaml or an "
                          "encoder spec")

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc).lower() and "zip" not in str(exc).lower():
            raise unreadable(exc) from None
    except Exception as exc:  # noqa: BLE001 - pickle errors, truncated files, ...
        raise unreadable(exc) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) files cannot mmap
    except Exception as exc:  # noqa: BLE001
        raise unreadable(exc) from None


def load_model(model: Union[str, os.PathLike, nn.Module, "LoadedModel"], *, device=None,
               fusion: Optional[str] = None) -> LoadedModel:
    """Resolves ``model`` (see the module doc) into a :class:`LoadedModel` in ``eval()`` mode on ``device``.

    ``fusion`` is used for published ESM-GearNet ``.pth`` files only (default: inferred from the weights,
    where serial and parallel differ in the structure encoder's input width). Raises :class:`ValueError` /
    :class:`FileNotFoundError` naming the problem otherwise.
    """
    if isinstance(model, LoadedModel):
        loaded = model
    elif isinstance(model, nn.Module):
        if hasattr(model, "model") and hasattr(model, "predict") and isinstance(model.model, nn.Module):
            loaded = LoadedModel(model.model, model, {"kind": "module", "class": type(model).__name__},
                                 getattr(model, "task_names", None))
        else:
            loaded = LoadedModel(model, None, {"kind": "module", "class": type(model).__name__})
    elif isinstance(model, (str, os.PathLike)):
        text = os.fspath(model)
        path = Path(text)
        if path.is_file():
            loaded = _load_model_file(path, fusion)
        elif "=" in text:
            fields = parse_model_spec(text)
            seed = int(fields.pop("seed", 0) or 0)
            cfg = _model_config_from(fields, f"model spec {text!r}")
            loaded = LoadedModel(_build_seeded(cfg, seed), None, {"kind": "spec", "source": text, "seed": seed,
                                                                  "model": _config_dict(cfg)})
        elif path.is_dir():
            best = path / "checkpoints" / "best.pt"
            if not best.is_file():
                raise ValueError(f"{text} is a folder without checkpoints/best.pt; give a checkpoint file")
            loaded = _load_model_file(best, fusion)
        else:
            raise FileNotFoundError(f"{text}: no such checkpoint file, and not an encoder spec "
                                    "(e.g. 'esm=random:tiny,structure=gearnet,fusion=serial')")
    else:
        raise TypeError(f"model must be a path, an encoder spec, an nn.Module or a LoadedModel, "
                        f"got {type(model).__name__}")
    loaded.encoder.eval()
    if loaded.task is not None:
        loaded.task.eval()
    if device is not None:
        loaded.to(device)
    return loaded


def _build_seeded(cfg, seed: int) -> nn.Module:
    """``build_model(cfg)`` with the global RNG seeded (and restored): random weights are reproducible, so
    the same spec gives the same embeddings in every process."""
    from .models.factory import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(cfg)


def _load_model_file(path: Path, fusion: Optional[str]) -> LoadedModel:
    if path.suffix.lower() in (".yaml", ".yml"):
        from omegaconf import OmegaConf

        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        if isinstance(raw, dict) and "model" in raw and isinstance(raw["model"], dict):
            raw = raw["model"]  # a whole train config: take its model section
        raw = dict(raw) if isinstance(raw, Mapping) else raw
        seed = int(raw.pop("seed", 0) or 0) if isinstance(raw, dict) else 0
        cfg = _model_config_from(raw, str(path))
        return LoadedModel(_build_seeded(cfg, seed), None, {"kind": "yaml", "source": str(path), "seed": seed,
                                                            "model": _config_dict(cfg)})
    obj = _peek_checkpoint(path)
    if isinstance(obj, dict) and obj.get("format") == "esmgear_fast.checkpoint":
        from .engine.checkpoint import load_task

        config = obj.get("config") or {}
        names = obj.get("tasks")
        task_type = obj.get("task_type")
        del obj
        task, _ = load_task(path)
        names = [str(n) for n in names] if names is not None else None
        encoder = getattr(task, "model", None)
        if not isinstance(encoder, nn.Module):
            raise ValueError(f"{path}: the task rebuilt from this checkpoint has no 'model' encoder")
        meta = {"kind": "checkpoint", "source": str(path), "config": _jsonable(config), "task_type": task_type}
        return LoadedModel(encoder, task, meta, names)
    if isinstance(obj, dict) and obj.get("format") == "esmgear_fast.model":
        from .models.factory import load_model as load_model_file

        del obj
        encoder = load_model_file(path)
        cfg = getattr(encoder, "model_config", None)
        return LoadedModel(encoder, None, {"kind": "model_file", "source": str(path),
                                           "model": _config_dict(cfg) if cfg is not None else None})
    if isinstance(obj, dict):
        from .models.factory import load_esm_gearnet

        encoder = load_esm_gearnet(obj, fusion=fusion)  # fusion None: inferred from the weights
        return LoadedModel(encoder, None, {"kind": "published", "source": str(path),
                                           "fusion": getattr(encoder, "fusion", fusion)})
    raise ValueError(f"{path}: not a checkpoint this package reads (expected an esmgear_fast checkpoint, a "
                     f"published ESM-GearNet .pth state dict, or a ModelConfig .yaml); found {type(obj).__name__}")


def _jsonable(obj):
    try:
        json.dumps(obj)
        return obj
    except TypeError:
        return json.loads(json.dumps(obj, default=str))


# ============================================================================ running
_PRECISIONS = {"fp32": None, "float32": None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
               "fp16": torch.float16, "float16": torch.float16}


def resolve_device(device=None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: Optional[str], device: torch.device) -> str:
    """``auto`` -> ``bf16`` on CUDA devices that support it, else ``fp32``."""
    if precision in (None, "auto"):
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    return precision


def precision_context(precision: str, device: torch.device):
    """Autocast for ``bf16`` / ``fp16`` (outputs are returned in float32), nothing for ``fp32``."""
    dtype = _PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def encode_batch(encoder: nn.Module, batch: ProteinBatch, device: torch.device, precision: str
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(graph_feature [B, D], node_feature [N, D])`` as float32 CPU tensors."""
    with torch.inference_mode(), precision_context(precision, device):
        out = encoder(batch.to(device, non_blocking=True))
    if not isinstance(out, Mapping) or "graph_feature" not in out or "node_feature" not in out:
        raise TypeError("the encoder must return a dict with 'graph_feature' and 'node_feature'")
    graph, node = out["graph_feature"], out["node_feature"]
    if graph.shape[0] != batch.num_proteins or node.shape[0] != batch.num_nodes:
        raise ValueError(f"the encoder returned graph_feature {tuple(graph.shape)} / node_feature "
                         f"{tuple(node.shape)} for {batch.num_proteins} proteins, {batch.num_nodes} residues")
    return graph.float().cpu(), node.float().cpu()


def run_batches(batches: Iterable[List[ParsedProtein]], fn: Callable[[List[ParsedProtein]], Any],
                failures: List[Tuple[str, str]], on_failed: Optional[Callable[[List[ParsedProtein]], None]] = None
                ) -> Iterator[Tuple[List[ParsedProtein], Any]]:
    """Applies ``fn`` to each batch; when a batch raises, retries its proteins one by one so a single bad
    protein (reported in ``failures`` as ``(key, "model: <error>")``) does not take the others down."""

    def fail(it, exc):
        failures.append((it.key, f"model: {_error_text(exc)}"))
        if on_failed is not None:
            on_failed([it])

    for items in batches:
        try:
            result = fn(items)
        except Exception as exc:  # noqa: BLE001
            if len(items) == 1:
                fail(items[0], exc)
                continue
        else:
            yield items, result
            continue
        for it in items:
            try:
                result = fn([it])
            except Exception as exc:  # noqa: BLE001
                fail(it, exc)
            else:
                yield [it], result


# ============================================================================ output files
def format_from_path(path: PathLike, fmt: Optional[str] = None) -> str:
    if fmt not in (None, "auto"):
        if fmt not in EMBEDDING_FORMATS:
            raise ValueError(f"format must be one of {EMBEDDING_FORMATS}, got {fmt!r}")
        return fmt
    name = Path(path).name.lower()
    for suffix, f in ((".h5", "h5"), (".hdf5", "h5"), (".hdf", "h5"), (".npz", "npz"), (".pt", "pt"), (".pth", "pt")):
        if name.endswith(suffix):
            return f
    raise ValueError(f"cannot tell the output format from {Path(path).name!r}: use .h5, .npz or .pt "
                     "(or --format)")


def _partial_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial-{os.getpid()}")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _commit(tmp: Path, path: Path) -> None:
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` via a partial file + fsync + rename."""
    path = Path(path)
    tmp = _partial_path(path)
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _clean(text: str) -> str:
    return " ".join(str(text).split())


def write_failures(path: PathLike, failures: Sequence[Tuple[str, str]]) -> None:
    """``path\treason`` lines (header first), written atomically."""
    lines = ["path\treason"] + [f"{_clean(p)}\t{_clean(r)}" for p, r in failures]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _str_array(values: Sequence[str]) -> np.ndarray:
    return np.array(list(values), dtype=np.str_) if values else np.zeros(0, dtype="<U1")


class EmbeddingWriter:
    """Writes embeddings to ``.h5`` / ``.npz`` / ``.pt`` atomically (use as a context manager).

    Layout (all three formats): ``keys``, ``files``, ``chains``, ``sequences`` (one string per protein),
    ``graph_feature`` float32 ``[B, D]`` (per-protein embeddings), with ``per_residue`` also
    ``node_feature`` float32 ``[N, D]`` and ``ptr`` int64 ``[B+1]`` (protein ``b``'s residues are
    ``ptr[b]:ptr[b+1]``); metadata: ``format``, ``format_version``, ``esmgear_fast_version``, ``config``
    (JSON), ``precision``, ``num_failures``, ``complete``. HDF5 rows are streamed to the partial file as they
    come (memory stays bounded); NPZ and PT are assembled in memory. Rows are in processing order (longest
    first within a batching buffer); look proteins up by key (:func:`load_embeddings`).
    """

    def __init__(self, path: PathLike, *, fmt: Optional[str] = None, per_residue: bool = False,
                 metadata: Optional[Mapping[str, Any]] = None, overwrite: bool = False):
        self.path = Path(path)
        self.fmt = format_from_path(self.path, fmt)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} exists; pass --overwrite (overwrite=True) to replace it")
        if self.path.is_dir():
            raise IsADirectoryError(f"{self.path} is a folder")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.per_residue = bool(per_residue)
        self.metadata = dict(metadata or {})
        self.tmp = _partial_path(self.path)
        self.keys: List[str] = []
        self.files: List[str] = []
        self.chains: List[str] = []
        self.sequences: List[str] = []
        self.lengths: List[int] = []
        self._graph: List[np.ndarray] = []
        self._node: List[np.ndarray] = []
        self._seen = set()
        self._h5 = None
        self._closed = False
        if self.fmt == "h5":
            import h5py

            self._h5 = h5py.File(self.tmp, "w")
            self._h5.attrs["complete"] = False

    def add(self, items: Sequence[ParsedProtein], graph: torch.Tensor, node: Optional[torch.Tensor]) -> None:
        """Appends a batch: ``graph [B, D]``; ``node [N, D]`` (packed in ``items`` order) if per-residue."""
        for it in items:
            if it.key in self._seen:
                raise ValueError(f"duplicate key {it.key!r}")
            self._seen.add(it.key)
        g = graph.detach().float().cpu().numpy()
        self.keys += [it.key for it in items]
        self.files += [it.file for it in items]
        self.chains += [it.chain for it in items]
        self.sequences += [it.protein.sequence for it in items]
        self.lengths += [len(it.protein) for it in items]
        n = node.detach().float().cpu().numpy() if (self.per_residue and node is not None) else None
        if self.per_residue and n is None:
            raise ValueError("per-residue writer needs node features")
        if self._h5 is not None:
            self._h5_append("graph_feature", g)
            if n is not None:
                self._h5_append("node_feature", n)
        else:
            self._graph.append(g)
            if n is not None:
                self._node.append(n)

    def _h5_append(self, name: str, rows: np.ndarray) -> None:
        f = self._h5
        if name not in f:
            chunk_rows = max(1, min(1024, (1 << 20) // max(1, rows.shape[1] * 4)))
            f.create_dataset(name, shape=(0, rows.shape[1]), maxshape=(None, rows.shape[1]), dtype="f4",
                             chunks=(chunk_rows, rows.shape[1]))
        ds = f[name]
        start = ds.shape[0]
        ds.resize(start + rows.shape[0], axis=0)
        ds[start:] = rows

    def __len__(self) -> int:
        return len(self.keys)

    def _meta(self) -> Dict[str, Any]:
        from . import __version__

        meta = {"format": FILE_FORMAT_TAG, "format_version": FILE_FORMAT_VERSION, "esmgear_fast_version": __version__,
                "per_residue": self.per_residue}
        for k, v in self.metadata.items():
            meta[k] = v
        meta["config"] = json.dumps(_jsonable(meta.get("config", {})), sort_keys=True)
        return meta

    def close(self) -> Path:
        """Finishes the file and moves it into place; returns the path."""
        if self._closed:
            return self.path
        ptr = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(np.asarray(self.lengths, dtype=np.int64), out=ptr[1:])
        meta = self._meta()
        dim = None
        if self._h5 is not None:
            import h5py

            f = self._h5
            if "graph_feature" in f:
                dim = f["graph_feature"].shape[1]
            else:
                f.create_dataset("graph_feature", shape=(0, 0), dtype="f4")
            if self.per_residue and "node_feature" not in f:
                f.create_dataset("node_feature", shape=(0, dim or 0), dtype="f4")
            str_t = h5py.string_dtype("utf-8")
            for name, values in (("keys", self.keys), ("files", self.files), ("chains", self.chains),
                                 ("sequences", self.sequences)):
                f.create_dataset(name, data=np.array(values, dtype=object), dtype=str_t)
            if self.per_residue:
                f.create_dataset("ptr", data=ptr)
            for k, v in meta.items():
                f.attrs[k] = v
            f.attrs["complete"] = True  # last: a file without it was not finished
            f.flush()
            f.close()
            self._h5 = None
        else:
            graph = np.concatenate(self._graph) if self._graph else np.zeros((0, 0), np.float32)
            arrays = {"keys": _str_array(self.keys), "files": _str_array(self.files),
                      "chains": _str_array(self.chains), "sequences": _str_array(self.sequences),
                      "graph_feature": graph}
            if self.per_residue:
                arrays["node_feature"] = (np.concatenate(self._node) if self._node
                                          else np.zeros((0, graph.shape[1]), np.float32))
                arrays["ptr"] = ptr
            if self.fmt == "npz":
                for k, v in meta.items():
                    arrays[f"meta_{k}"] = np.array(v)
                arrays["complete"] = np.array(True)
                with open(self.tmp, "wb") as fh:
                    np.savez(fh, **arrays)
            else:
                obj = {k: (torch.from_numpy(v) if v.dtype.kind in "fiub" else v.tolist()) for k, v in arrays.items()}
                obj["metadata"] = meta
                obj["complete"] = True
                torch.save(obj, self.tmp)
        _commit(self.tmp, self.path)
        self._closed = True
        return self.path

    def abort(self) -> None:
        """Removes the partial file (the target is never touched)."""
        if self._h5 is not None:
            with contextlib.suppress(Exception):
                self._h5.close()
            self._h5 = None
        with contextlib.suppress(OSError):
            self.tmp.unlink()
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


# ============================================================================ results / reading
class Embeddings(dict):
    """``{key: Tensor[D]}`` per-protein embeddings, plus:

    * ``residues``: ``{key: Tensor[L, D]}`` per-residue embeddings (``None`` unless asked for);
    * ``files``, ``chains``, ``sequences``: ``{key: str}``;
    * ``failures``: ``[(path or key, reason)]`` for inputs that could not be read or encoded;
    * ``metadata``: model config, package version, precision, ...

    ``matrix()`` stacks the per-protein embeddings as ``(keys, Tensor[B, D])``.
    """

    def __init__(self):
        super().__init__()
        self.residues: Optional[Dict[str, torch.Tensor]] = None
        self.files: Dict[str, str] = {}
        self.chains: Dict[str, str] = {}
        self.sequences: Dict[str, str] = {}
        self.failures: List[Tuple[str, str]] = []
        self.metadata: Dict[str, Any] = {}

    def matrix(self) -> Tuple[List[str], torch.Tensor]:
        keys = list(self.keys())
        if not keys:
            return keys, torch.zeros(0, 0)
        return keys, torch.stack([self[k] for k in keys])

    def _add(self, key, file, chain, sequence, graph, residues=None):
        self[key] = graph
        self.files[key] = file
        self.chains[key] = chain
        self.sequences[key] = sequence
        if residues is not None:
            if self.residues is None:
                self.residues = {}
            self.residues[key] = residues

    def __repr__(self) -> str:
        dim = next(iter(self.values())).shape[-1] if len(self) else 0
        return (f"Embeddings({len(self)} proteins, dim={dim}, per_residue={self.residues is not None}, "
                f"failures={len(self.failures)})")


def load_embeddings(path: PathLike) -> Embeddings:
    """Reads a file written by ``python -m esmgear_fast.embed`` / :class:`EmbeddingWriter`.

    Raises :class:`ValueError` for files that are not complete embedding files (e.g. a partial file
    left by a killed run)."""
    path = Path(path)
    fmt = format_from_path(path)
    if fmt == "h5":
        import h5py

        with h5py.File(path, "r") as f:
            if not bool(f.attrs.get("complete", False)) or f.attrs.get("format") != FILE_FORMAT_TAG:
                raise ValueError(f"{path} is not a complete esmgear_fast embeddings file")
            data = {k: f[k][()] for k in f.keys()}
            meta = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
        for k in ("keys", "files", "chains", "sequences"):
            data[k] = [s.decode() if isinstance(s, bytes) else str(s) for s in data[k]]
    elif fmt == "npz":
        with np.load(path, allow_pickle=False) as z:
            if "complete" not in z.files or not bool(z["complete"]):
                raise ValueError(f"{path} is not a complete esmgear_fast embeddings file")
            data = {k: z[k] for k in z.files}
        meta = {k[5:]: data.pop(k).item() for k in list(data) if k.startswith("meta_")}
        for k in ("keys", "files", "chains", "sequences"):
            data[k] = [str(s) for s in data[k]]
    else:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(obj, dict) or not obj.get("complete"):
            raise ValueError(f"{path} is not a complete esmgear_fast embeddings file")
        meta = obj.pop("metadata")
        data = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in obj.items()}
    out = Embeddings()
    out.metadata = dict(meta)
    if isinstance(out.metadata.get("config"), str):
        out.metadata["config"] = json.loads(out.metadata["config"])
    graph = torch.from_numpy(np.asarray(data["graph_feature"], dtype=np.float32))
    node = ptr = None
    if "node_feature" in data:
        node = torch.from_numpy(np.asarray(data["node_feature"], dtype=np.float32))
        ptr = np.asarray(data["ptr"]).tolist()
    for i, key in enumerate(data["keys"]):
        res = node[ptr[i]:ptr[i + 1]] if node is not None else None
        out._add(key, data["files"][i], data["chains"][i], data["sequences"][i], graph[i], res)
    return out


# ============================================================================ progress
class Progress:
    """A tqdm bar over input files (or nothing), counting proteins and residues as they are done."""

    def __init__(self, total: int, enabled: bool, desc: str):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="file", desc=desc, file=sys.stderr, dynamic_ncols=True)
        self._pending: Dict[str, int] = {}
        self.proteins = 0
        self.residues = 0
        self.t0 = time.perf_counter()

    def file_parsed(self, f: InputFile, n: int) -> None:
        if n == 0:
            self._tick(1)
        else:
            self._pending[f.display] = self._pending.get(f.display, 0) + n

    def done(self, items: Sequence[ParsedProtein]) -> None:
        finished = 0
        for it in items:
            self.proteins += 1
            self.residues += len(it.protein)
            if it.file in self._pending:
                self._pending[it.file] -= 1
                if self._pending[it.file] == 0:
                    del self._pending[it.file]
                    finished += 1
        self._tick(finished)

    def failed(self, items: Sequence[ParsedProtein]) -> None:
        self.done(items)
        self.proteins -= len(items)
        self.residues -= sum(len(it.protein) for it in items)

    def _tick(self, n: int) -> None:
        if self.bar is not None and n:
            self.bar.update(n)
            self.bar.set_postfix(proteins=self.proteins, refresh=False)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
