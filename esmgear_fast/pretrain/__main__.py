"""Pre-train from a config: ``python -m esmgear_fast.pretrain [--config FILE] [key=value ...]``.

    python -m esmgear_fast.pretrain                                        # built-in demo (CPU, a few minutes)
    python -m esmgear_fast.pretrain --config configs/pretrain/residue_type.yaml data.path=~/data/afdb
    python -m esmgear_fast.pretrain --resume runs/residue_type-20260101-120000   # continue a killed run
    torchrun --standalone --nproc_per_node=4 -m esmgear_fast.pretrain --config ...   # DDP

The config is a training config (``data``, ``model``, ``task``, ``optim``, ``train``, ``run``; see
:mod:`esmgear_fast.engine.config`) with ``task.name`` one of :data:`esmgear_fast.pretrain.METHODS`, plus a
``pretrain:`` section read here:

    pretrain:
      options: {mask_rate: 0.15, crop_length: 100}   # the method's options (esmgear_fast.pretrain.method_options)
      save_every: 5                                  # also keep checkpoints/epoch_<k>.pt every k epochs
      export: esm_gearnet                            # and exports/esm_gearnet_epoch_<k>.pth (published layout)

The loop, precision, DDP, checkpoints and exact resume are the engine's (the same as ``train``); the run folder
gets ``pretrain.yaml`` next to ``config.yaml``. ``data.dataset: demo`` (the default) pre-trains on the real
chains shipped in :mod:`esmgear_fast.demo` (training split) with a tiny random ESM, for a few minutes on CPU.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..engine import distributed as D
from ..engine.config import Config, ConfigError, load_config
from . import METHODS, build_pretrain_task, method_options

__all__ = ["PretrainSection", "DemoStructures", "build", "export_esm_gearnet", "load_pretrain_task", "main",
           "resolve_config", "run"]

EXPORTS = (None, "esm_gearnet")


@dataclass
class PretrainSection:
    """The ``pretrain:`` section: method options, periodic epoch checkpoints, the published-layout export."""
    options: Dict[str, Any] = field(default_factory=dict)
    save_every: int = 5
    export: Optional[str] = None

    def validate(self, method: str) -> None:
        if method not in METHODS:
            raise ConfigError(f"task.name={method!r} is not a pre-training method; choose one of {', '.join(METHODS)}")
        unknown = sorted(set(self.options) - set(method_options(method)))
        if unknown:
            raise ConfigError(f"pretrain.options: unknown option(s) {unknown} for {method!r}; "
                              f"valid: {sorted(method_options(method))}")
        if self.export not in EXPORTS:
            raise ConfigError(f"pretrain.export={self.export!r}: choose null or 'esm_gearnet'")
        if self.save_every < 1:
            raise ConfigError(f"pretrain.save_every must be >= 1, got {self.save_every}")


# ----------------------------------------------------------------------------------------------- demo data
DEMO_CONFIG = {
    "data": {"dataset": "demo", "batch_size": 8},
    "model": {"esm": "random:tiny", "structure": "gearnet", "fusion": "serial",
              "hidden_dims": [128, 128, 128]},
    "task": {"name": "distance"},
    "optim": {"optimizer": "adam", "lr": 1e-3},
    "train": {"epochs": 6, "log_every": 5, "device": "auto", "eval_splits": [], "num_threads": 1},
    "run": {"tensorboard": False},
}
DEMO_PRETRAIN = {"options": {"num_sample": 64}, "save_every": 2, "export": "esm_gearnet"}


class DemoStructures(torch.utils.data.Dataset):
    """Unlabelled ``{"protein": Protein}`` items of real structures: the training split of the packaged demo
    chains (:mod:`esmgear_fast.demo`, real PDB/mmCIF chains) by default, or every PDB/mmCIF file in ``path``."""

    def __init__(self, path: Optional[str] = None, max_proteins: int = 96, min_len: int = 40):
        if path:
            folder = Path(path)
            files = sorted(p for p in folder.rglob("*") if p.is_file() and _is_structure(p.name)) \
                if folder.is_dir() else []
            if not files:
                raise FileNotFoundError(f"data.path={path}: no PDB/mmCIF files there for the pre-training demo")
            from ..io import load_structure
            proteins = [load_structure(f) for f in files[:max_proteins]]
            self.source = str(folder)
        else:
            from ..demo import DemoDataset
            train = DemoDataset().split()[0]
            keep = [i for i in range(len(train)) if int(train.lengths[i]) >= min_len][:max_proteins]
            proteins = [train.protein(i) for i in keep]
            self.source = "the packaged demo chains (esmgear_fast.demo, training split)"
        self.proteins = [p for p in proteins if len(p) >= 4]
        if not self.proteins:
            raise ValueError(f"no protein of at least 4 residues for the pre-training demo ({self.source})")
        self.names = [p.name for p in self.proteins]
        self.lengths = [len(p) for p in self.proteins]
        self.tasks: List[str] = []
        self.task_type = None

    def __len__(self):
        return len(self.proteins)

    def __getitem__(self, index):
        return {"protein": self.proteins[index]}


def _is_structure(name: str) -> bool:
    name = name.lower()
    name = name[:-3] if name.endswith(".gz") else name
    return name.endswith((".pdb", ".ent", ".cif", ".mmcif"))


def build_datasets(cfg: Config):
    """The training set: every item of ``data.dataset`` (pre-training uses no validation/test split), with the
    configured ``data.transforms``. Items are ``{"protein": Protein, ...}`` (labels, if any, are ignored)."""
    if cfg.data.dataset == "demo":
        return DemoStructures(os.path.expanduser(cfg.data.path) if cfg.data.path else None,
                              **dict(cfg.data.options or {}))
    from ..train import TransformedDataset, _raw_dataset, build_transforms
    data = _raw_dataset(cfg)
    if len(data) == 0:
        raise ValueError(f"data.dataset={cfg.data.dataset} at {cfg.data.path}: no proteins to pre-train on")
    return TransformedDataset(data, build_transforms(cfg, True))


# ----------------------------------------------------------------------------------------------- config
def _split(plain: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    plain = dict(plain or {})
    section = plain.pop("pretrain", None) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"the pretrain: section must be a mapping, got {type(section).__name__}")
    unknown = sorted(set(section) - {"options", "save_every", "export"})
    if unknown:
        raise ConfigError(f"pretrain: unknown key(s) {unknown}; valid: export, options, save_every")
    return plain, section


def _load_yaml(path: Path) -> Dict[str, Any]:
    from omegaconf import OmegaConf
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        plain = OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}
    except Exception as e:
        raise ConfigError(f"{path}: not a valid YAML config: {e}") from None
    if not isinstance(plain, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections")
    return plain


def _apply_pretrain_overrides(section: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """``pretrain.*=value`` overrides merged onto the section."""
    from omegaconf import OmegaConf
    if not overrides:
        return section
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
    try:
        merged = OmegaConf.merge(OmegaConf.create({"pretrain": section}), OmegaConf.from_dotlist(list(overrides)))
    except Exception as e:
        raise ConfigError(f"pretrain overrides {list(overrides)}: {e}") from None
    return OmegaConf.to_container(merged, resolve=True)["pretrain"]


def resolve_config(args: argparse.Namespace) -> Tuple[Config, PretrainSection, Optional[Path]]:
    overrides = list(args.overrides)
    mine = [o for o in overrides if o.startswith("pretrain.")]
    engine_overrides = [o for o in overrides if not o.startswith("pretrain.")]
    if args.resume:
        run_dir = Path(os.path.expanduser(args.resume))
        if args.config:
            raise ConfigError("--resume takes the config from the run folder; drop --config")
        if not (run_dir / "config.yaml").is_file() or not (run_dir / "pretrain.yaml").is_file():
            raise FileNotFoundError(f"--resume {run_dir}: config.yaml / pretrain.yaml missing (not a pre-training run?)")
        plain, section = _load_yaml(run_dir / "config.yaml"), _load_yaml(run_dir / "pretrain.yaml")
        engine_overrides += ["run.resume=true", f"run.out_dir={run_dir}"]
        path = run_dir / "config.yaml"
    elif args.config:
        path = Path(args.config)
        plain, section = _split(_load_yaml(path))
    else:
        path = None
        plain, section = dict(DEMO_CONFIG), dict(DEMO_PRETRAIN)
    cfg = load_config(None, engine_overrides, base=plain)
    if path is None and not args.resume and cfg.task.name in METHODS:   # demo defaults that fit the method
        valid = method_options(cfg.task.name)
        section["options"] = {k: v for k, v in section["options"].items() if k in valid}
    _, section = _split({"pretrain": _apply_pretrain_overrides(section, mine)})
    psec = PretrainSection(**section)
    psec.validate(cfg.task.name)
    if cfg.run.name is None and path is None:
        cfg.run.name = f"pretrain-demo-{cfg.task.name}"
    return cfg, psec, path


# ----------------------------------------------------------------------------------------------- run
def build(cfg: Config, psec: PretrainSection):
    """The pre-training task (``FusionNetwork`` + method head) of a config."""
    from ..models.factory import build_model
    if cfg.train.gradient_checkpointing:
        cfg.model.gradient_checkpointing = True
    model = build_model(cfg.model)
    options = dict(psec.options)
    if cfg.task.num_mlp_layer is not None and "num_mlp_layer" in method_options(cfg.task.name):
        options.setdefault("num_mlp_layer", cfg.task.num_mlp_layer)
    return build_pretrain_task(cfg.task.name, model, options)


def export_esm_gearnet(task, path) -> Path:
    """Writes ``task.model`` in the published ESM-GearNet layout (``FusionNetwork.state_dict()`` key names,
    what ``torch.save(model.state_dict())`` gave in ESM-GearNet's ``script/pretrain.py``), atomically."""
    from ..engine.checkpoint import atomic_save
    from ..models.factory import to_esm_gearnet_state_dict
    model = getattr(task, "module", task).model
    state = {k: v.detach().cpu().clone() for k, v in to_esm_gearnet_state_dict(model).items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(state, path)
    return path


def load_pretrain_task(path, map_location="cpu"):
    """``(task, config, pretrain_section)`` of a pre-training checkpoint (``last.pt``/``best.pt``/``epoch_<k>.pt``):
    the method rebuilt with the options stored in the file (``engine.checkpoint.load_task`` would use the
    method's defaults), weights loaded strictly, in eval mode."""
    from ..engine.checkpoint import check_state_dict, load_checkpoint
    from ..engine.config import config_from_dict
    from ..models.factory import build_model
    ckpt = load_checkpoint(path, map_location="cpu")
    if "pretrain" not in ckpt:
        raise ValueError(f"{path} is not a pre-training checkpoint of python -m esmgear_fast.pretrain "
                         f"(no 'pretrain' entry); use esmgear_fast.engine.checkpoint.load_task")
    cfg = config_from_dict(ckpt["config"])
    psec = PretrainSection(**ckpt["pretrain"])
    model = build_model(cfg.model, pretrained=False)
    task = build_pretrain_task(cfg.task.name, model, dict(psec.options))
    check_state_dict(task.state_dict(), ckpt["model"], f"checkpoint {path}")
    task.load_state_dict(ckpt["model"], strict=True)
    return task.to(map_location).eval(), cfg, psec


def _engine_class():
    from ..engine.loop import Engine

    class PretrainEngine(Engine):
        """The engine plus ESM-GearNet's ``save_interval``: ``checkpoints/epoch_<k>.pt`` (and the export) every
        ``save_every`` epochs and at the end."""

        def __init__(self, *a, psec: PretrainSection, **kw):
            super().__init__(*a, **kw)
            self.psec = psec

        def _payload(self, full: bool):
            payload = super()._payload(full)
            payload["pretrain"] = asdict(self.psec)       # the method options (read by load_pretrain_task)
            return payload

        def _end_epoch(self) -> None:
            super()._end_epoch()
            done = self.epoch                         # epochs finished
            if not self.is_main or (done % self.psec.save_every and done != self.cfg.train.epochs):
                return
            from ..engine.checkpoint import atomic_save
            atomic_save(self._payload(full=False), self.ckpt_dir / f"epoch_{done}.pt")
            if self.psec.export == "esm_gearnet":
                path = export_esm_gearnet(self.task, self.out_dir / "exports" / f"esm_gearnet_epoch_{done}.pth")
                self.log(f"exported {path}")

    return PretrainEngine


def run(cfg: Config, psec: PretrainSection, config_path: Optional[Path] = None) -> dict:
    from ..train import cpu_threads
    with cpu_threads(cfg.train.num_threads):
        return _run(cfg, psec, config_path)


def _run(cfg: Config, psec: PretrainSection, config_path: Optional[Path]) -> dict:
    from omegaconf import OmegaConf
    from ..engine.checkpoint import atomic_write_bytes, load_init_weights
    from ..engine.loop import seed_everything
    from ..train import _out_dir, train_batch_sampler

    dist = D.init_distributed(cfg.train.device)
    out_dir = _out_dir(cfg, config_path, dist)
    cfg.run.out_dir = str(out_dir)
    if dist.is_main and not cfg.run.resume and (out_dir / "checkpoints" / "last.pt").exists():
        raise FileExistsError(f"{out_dir} already holds a run; continue it with --resume {out_dir}")
    seed_everything(cfg.train.seed)
    train_set = build_datasets(cfg)
    task = build(cfg, psec)
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if dist.is_main else (lambda m: None)
    log(f"pre-training {cfg.task.name} on {len(train_set)} proteins"
        + (f" ({train_set.source})" if hasattr(train_set, "source") else "")
        + f"; trainable parameters {sum(p.numel() for p in task.parameters() if p.requires_grad):,}"
        + f", frozen {sum(p.numel() for p in task.parameters() if not p.requires_grad):,}")
    resuming = cfg.run.resume and (out_dir / "checkpoints" / "last.pt").is_file()
    if cfg.run.init_checkpoint and not resuming:
        log(f"init: {load_init_weights(task, os.path.expanduser(cfg.run.init_checkpoint), cfg.run.init_strict)}")
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out_dir / "pretrain.yaml", OmegaConf.to_yaml(OmegaConf.create(asdict(psec))).encode())
    sampler = train_batch_sampler(cfg, train_set, dist)
    engine = _engine_class()(cfg, task, train_set, None, None, out_dir=out_dir, dist=dist,
                             train_batch_sampler=sampler, log=log, psec=psec)
    summary = engine.fit()
    losses = [r["loss"] for r in engine.records if r.get("split") == "train"]
    log(f"done: {out_dir}; training loss per epoch: " + ", ".join(f"{v:.4g}" for v in losses))
    return summary


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m esmgear_fast.pretrain",
        description="Pre-train ESM-GearNet with one of: " + ", ".join(METHODS) + " (see configs/pretrain/).",
        epilog="Examples: python -m esmgear_fast.pretrain  (the demo) | --config configs/pretrain/siamdiff.yaml "
               "data.path=~/data/afdb pretrain.export=esm_gearnet | --resume runs/NAME")
    p.add_argument("--config", "-c", help="YAML config (default: the built-in demo)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the pre-training run in RUN_DIR")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-4 pretrain.options.mask_rate=0.2")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        cfg, psec, path = resolve_config(args)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        from omegaconf import OmegaConf
        from ..engine.config import config_to_dict
        print(OmegaConf.to_yaml(OmegaConf.create({**config_to_dict(cfg), "pretrain": asdict(psec)})))
        return 0
    try:
        run(cfg, psec, path)
    finally:
        D.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
