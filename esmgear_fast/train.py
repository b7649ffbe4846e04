"""Train (fine-tune or pre-train) from a config: ``python -m esmgear_fast.train [--config FILE] [key=value ...]``.

    python -m esmgear_fast.train                                   # the built-in demo (tiny, CPU, ~1 min)
    python -m esmgear_fast.train --config configs/EC/esm_gearnet_serial.yaml data.path=~/data/EC optim.lr=3e-4
    python -m esmgear_fast.train --resume runs/esm_gearnet-20260101-120000      # continue a killed run
    torchrun --standalone --nproc_per_node=4 -m esmgear_fast.train --config ...  # DDP (NCCL / gloo on CPU)

config -> datasets -> model -> task -> :class:`esmgear_fast.engine.Engine`. The run folder (``run.out_dir``,
default ``runs/<config name>-<UTC time>``) gets ``config.yaml``, ``metrics.jsonl``, ``summary.json``,
``curves.png``, ``checkpoints/{last,best}.pt`` and TensorBoard events.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import torch

from .engine import distributed as D
from .engine.config import Config, ConfigError, load_config

__all__ = ["main", "build_datasets", "build_transforms", "default_config_path", "run"]


# ----------------------------------------------------------------------------------------------- data
class TransformedDataset(torch.utils.data.Dataset):
    """A dataset with a transform applied to every sample; forwards ``lengths``, ``names``, ``tasks``,
    ``task_type`` (and any other attribute) to the wrapped dataset."""

    def __init__(self, dataset, transform):
        self.dataset = dataset
        self.transform = transform

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        sample = self.dataset[index]
        return self.transform(sample) if self.transform is not None else sample

    def __getattr__(self, name):
        if name in ("dataset", "transform"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def build_transforms(cfg: Config, train: bool):
    """The per-sample transforms of ``data.transforms`` for the training split (random windows / crops)
    or an evaluation split (deterministic: first window, no crop)."""
    from .data.transforms import Compose, RandomCrop, TruncateProtein, TruncateProteinPair
    t = cfg.data.transforms
    out = []
    if t.truncate is not None:
        out.append(TruncateProtein(t.truncate, random=bool(train and t.truncate_random)))
    if t.pair_max_residues is not None:
        out.append(TruncateProteinPair(t.pair_max_residues, random=bool(train and t.truncate_random)))
    if t.crop is not None and train:
        if t.crop != "subsequence":
            raise ConfigError(f"data.transforms.crop={t.crop!r}: only 'subsequence' is a data transform "
                              f"(spatial crops belong to the pre-training method, e.g. multiview)")
        out.append(RandomCrop(t.crop_length))
    if not out:
        return None
    return out[0] if len(out) == 1 else Compose(out)


def _require_path(cfg: Config) -> str:
    if cfg.data.path is None:
        raise ConfigError(f"data.path is required for data.dataset={cfg.data.dataset} "
                          f"(e.g. data.path=~/data/{cfg.data.dataset})")
    return os.path.expanduser(cfg.data.path)


def _raw_dataset(cfg: Config):
    """The whole dataset named by ``data.dataset`` (no transform)."""
    d = cfg.data
    opts = dict(d.options or {})
    name = d.dataset
    if name == "EnzymeCommission":
        from .data.datasets.deepfri import EnzymeCommission
        return EnzymeCommission(_require_path(cfg), **opts)
    if name == "GeneOntology":
        from .data.datasets.deepfri import GeneOntology
        if d.branch is not None:
            opts["branch"] = d.branch
        return GeneOntology(_require_path(cfg), **opts)
    if name in ("PSR", "MSP"):
        from .data.datasets import atom3d
        return getattr(atom3d, name)(_require_path(cfg), **opts)
    if name == "structures":
        from .data.datasets.structures import StructureDataset
        if d.labels is not None:
            opts["labels"] = os.path.expanduser(d.labels)
            # the label kind follows the task head unless data.options.task says otherwise
            kinds = {"multiple_binary": "multilabel", "property": "regression", "multiclass": "multiclass",
                     "binary": "binary"}
            if "task" not in opts and cfg.task.name in kinds:
                opts["task"] = kinds[cfg.task.name]
        return StructureDataset(_require_path(cfg), **opts)
    if name == "alphafold":
        from .data.datasets.alphafold import AlphaFoldDB
        return AlphaFoldDB(_require_path(cfg), **opts)
    if name == "demo":
        from .demo import demo_dataset
        return demo_dataset(**({"path": os.path.expanduser(d.path)} if d.path else {}), **opts)
    raise ConfigError(f"unknown data.dataset {name!r}")  # validate() already checks the choices


class DatasetError(ValueError):
    """The configured dataset cannot be built (bad files, labels that do not match the structures, ...)."""


def build_datasets(cfg: Config) -> Tuple[Any, Optional[Any], Optional[Any]]:
    """``(train, valid, test)`` with the configured transforms (valid/test ``None`` for unsplit data)."""
    try:
        full = _raw_dataset(cfg)
    except (FileNotFoundError, ConfigError, ImportError):
        raise
    except (ValueError, KeyError, OSError, TypeError) as e:
        where = f" at {cfg.data.path}" if cfg.data.path else ""
        hint = (f" (data.options are passed to the dataset: {dict(cfg.data.options)})"
                if isinstance(e, TypeError) else "")
        raise DatasetError(f"data.dataset={cfg.data.dataset}{where}: {e}{hint}") from e
    if hasattr(full, "split"):
        train, valid, test = full.split()
    else:
        train, valid, test = full, None, None
    wrap = lambda ds, is_train: (None if ds is None else  # noqa: E731
                                 TransformedDataset(ds, build_transforms(cfg, is_train)))
    train = wrap(train, True)
    if len(train) == 0:
        raise ValueError(f"data.dataset={cfg.data.dataset} at {cfg.data.path}: the training split is empty")
    return train, wrap(valid, False), wrap(test, False)


def train_batch_sampler(cfg: Config, train_set, dist: D.DistInfo):
    """The resumable sampler of :mod:`esmgear_fast.data.samplers` for ``data.batch_size`` /
    ``data.max_residues``; DDP variants (disjoint shards, incomplete last round dropped) under torchrun."""
    from .data import samplers as S
    d, seed = cfg.data, cfg.train.seed
    n = len(train_set)
    if dist.distributed:
        if d.max_residues is not None:
            return S.DistributedLengthBatchSampler(train_set.lengths, d.max_residues, num_replicas=dist.world_size,
                                                   rank=dist.rank, shuffle=True, seed=seed, drop_last=True)
        return S.DistributedBatchSampler(n, d.batch_size, num_replicas=dist.world_size, rank=dist.rank,
                                         shuffle=True, seed=seed, drop_last=True)
    if d.max_residues is not None:
        return S.LengthBatchSampler(train_set.lengths, d.max_residues, shuffle=True, seed=seed)
    return S.FixedBatchSampler(n, d.batch_size, shuffle=True, seed=seed)


# ----------------------------------------------------------------------------------------------- config
def default_config_path() -> Optional[Path]:
    """The built-in demo config: ``esmgear_fast/configs/demo.yaml`` (packaged), else ``configs/demo.yaml``
    next to the repository."""
    here = Path(__file__).resolve().parent
    for cand in (here / "configs" / "demo.yaml", here.parent / "configs" / "demo.yaml"):
        if cand.is_file():
            return cand
    return None


def _out_dir(cfg: Config, config_path: Optional[Path], dist: D.DistInfo) -> Path:
    if cfg.run.out_dir:
        return Path(os.path.expanduser(cfg.run.out_dir))
    name = cfg.run.name or (config_path.stem if config_path is not None else "run")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    stamp = D.broadcast_object(stamp)       # every rank uses rank 0's folder
    return Path("runs") / f"{name}-{stamp}"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m esmgear_fast.train",
        description="Train or fine-tune ESM-GearNet-style models from a YAML config plus key=value overrides.",
        epilog="Examples: python -m esmgear_fast.train  (the demo) | --config configs/EC/esm_gearnet_serial.yaml "
               "data.path=~/data/EC | --resume runs/NAME | torchrun --standalone --nproc_per_node=2 -m "
               "esmgear_fast.train ...")
    p.add_argument("--config", "-c", help="YAML config (default: the built-in demo)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR (its config.yaml and "
                   "checkpoints/last.pt); overrides still apply")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=3e-4 train.epochs=5")
    return p.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> Tuple[Config, Optional[Path]]:
    overrides = list(args.overrides)
    if args.resume:
        run_dir = Path(os.path.expanduser(args.resume))
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            raise FileNotFoundError(f"--resume {run_dir}: no config.yaml there (is it a run folder?)")
        if args.config:
            raise ConfigError("--resume takes the config from the run folder; drop --config "
                              "(key=value overrides still apply)")
        cfg = load_config(saved, overrides + ["run.resume=true", f"run.out_dir={run_dir}"])
        return cfg, saved
    path = Path(args.config) if args.config else default_config_path()
    if path is None:
        raise FileNotFoundError("no --config given and the built-in demo config (esmgear_fast/configs/demo.yaml) "
                                "is missing from this installation; pass --config FILE.yaml")
    return load_config(path, overrides), path


# ----------------------------------------------------------------------------------------------- run
@contextlib.contextmanager
def cpu_threads(num_threads: Optional[int]):
    """``torch.set_num_threads(num_threads)`` for the block (``None``: unchanged), restored afterwards."""
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run(cfg: Config, config_path: Optional[Path] = None) -> dict:
    """Builds data, model and task from ``cfg`` and trains; returns the summary. Call under torchrun for DDP."""
    with cpu_threads(cfg.train.num_threads):
        return _run(cfg, config_path)


def _run(cfg: Config, config_path: Optional[Path]) -> dict:
    from .engine.checkpoint import load_init_weights
    from .engine.loop import Engine, seed_everything
    from .models.factory import build_model
    from .tasks import build_task

    dist = D.init_distributed(cfg.train.device)
    out_dir = _out_dir(cfg, config_path, dist)
    cfg.run.out_dir = str(out_dir)
    if not cfg.run.resume and (out_dir / "checkpoints" / "last.pt").exists():
        raise FileExistsError(f"{out_dir} already holds a run (checkpoints/last.pt); continue it with "
                              f"--resume {out_dir} (or run.resume=true), or choose another run.out_dir")
    seed_everything(cfg.train.seed)
    train_set, valid_set, test_set = build_datasets(cfg)
    if cfg.train.gradient_checkpointing:
        cfg.model.gradient_checkpointing = True
    model = build_model(cfg.model)
    task = build_task(cfg.task, model, train_set)
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if dist.is_main else (lambda m: None)
    resuming = cfg.run.resume and (out_dir / "checkpoints" / "last.pt").is_file()
    if cfg.run.init_checkpoint and not resuming:
        log(f"init: {load_init_weights(task, os.path.expanduser(cfg.run.init_checkpoint), cfg.run.init_strict)}")
    sampler = train_batch_sampler(cfg, train_set, dist)
    engine = Engine(cfg, task, train_set, valid_set, test_set, out_dir=out_dir, dist=dist,
                    train_batch_sampler=sampler, log=log)
    summary = engine.fit()
    log(f"done: {out_dir} (best epoch {summary.get('best_epoch')})")
    if dist.is_main and cfg.data.dataset == "demo":   # the demo ends with its table and the trivial baseline
        from .demo import demo_report
        print(demo_report(out_dir, os.path.expanduser(cfg.data.path) if cfg.data.path else None,
                          **dict(cfg.data.options or {})), flush=True)
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        cfg, path = resolve_config(args)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        from omegaconf import OmegaConf
        from .engine.config import config_to_dict
        print(OmegaConf.to_yaml(OmegaConf.create(config_to_dict(cfg))))
        return 0
    from .engine.checkpoint import CheckpointError
    from .engine.loop import BatchOutOfMemoryError, NonFiniteLossError
    try:
        run(cfg, path)
    except (ConfigError, FileNotFoundError, FileExistsError, CheckpointError, NonFiniteLossError,
            BatchOutOfMemoryError, DatasetError) as e:   # problems with the inputs: the message says what to do
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        D.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
