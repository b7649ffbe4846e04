"""The typed configuration of a training (or pre-training) run.

One :class:`Config` with six sections, each a dataclass::

    data:   which dataset, where it is, transforms, batching           (DataConfig)
    model:  the fusion network (esmgear_fast.models.factory.ModelConfig)
    task:   the head / pre-training method (esmgear_fast.tasks.TaskConfig)
    optim:  optimizer, learning-rate schedule, gradient clipping      (OptimConfig)
    train:  epochs, batch accumulation, precision, seed, evaluation   (TrainConfig)
    run:    run folder, resume, starting checkpoint, loggers          (RunConfig)

Configs are OmegaConf *structured* configs: a YAML file is merged onto the defaults, then ``key=value``
overrides (dotted keys, YAML values: ``optim.lr=3e-4 data.transforms.truncate=null``); an override of a
free-form mapping (``data.options={...}``, ``model.structure_options={...}``) replaces it instead of merging. Unknown keys and
values of the wrong type fail with a :class:`ConfigError` that lists the valid keys of the section.
:func:`save_config` writes the resolved config (``config.yaml`` of the run folder).

Example::

    from esmgear_fast.engine.config import load_config
    cfg = load_config("configs/EC/esm_gearnet_serial.yaml", ["optim.lr=3e-4", "train.epochs=5"])
    cfg.data.dataset, cfg.model.esm, cfg.train.precision
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

try:  # contract 1 (models helper)
    from ..models.factory import ModelConfig
except ImportError:  # pragma: no cover - placeholder until esmgear_fast.models.factory lands
    @dataclass
    class ModelConfig:  # type: ignore[no-redef]
        """Placeholder mirroring contract 1 until ``esmgear_fast.models.factory`` exists."""
        esm: Optional[str] = "esm2_t33_650M_UR50D"
        structure: Optional[str] = "gearnet"
        fusion: str = "serial"
        cross_dim: Optional[int] = None
        hidden_dims: Optional[List[int]] = None
        structure_options: Dict[str, Any] = field(default_factory=dict)
        long_sequences: str = "window"
        gradient_checkpointing: bool = False

try:  # contract 2 (tasks helper)
    from ..tasks import TaskConfig
except ImportError:  # pragma: no cover - placeholder until esmgear_fast.tasks lands
    @dataclass
    class TaskConfig:  # type: ignore[no-redef]
        """Placeholder mirroring contract 2 until ``esmgear_fast.tasks`` exists."""
        name: str = "multiple_binary"
        num_mlp_layer: int = 3
        mlp_dropout: float = 0.0
        normalization: bool = True
        metrics: List[str] = field(default_factory=lambda: ["f1_max", "auprc@micro"])
        selection_metric: str = "f1_max"
        sequence_model_lr_ratio: float = 0.1

__all__ = [
    "Config", "ConfigError", "DataConfig", "ModelConfig", "OptimConfig", "RunConfig", "TaskConfig",
    "TrainConfig", "TransformConfig", "config_to_dict", "config_from_dict", "load_config", "save_config",
    "DATASETS", "PRECISIONS", "SCHEDULERS",
]

#: dataset names understood by ``data.dataset`` (see :mod:`esmgear_fast.train`)
DATASETS = ("EnzymeCommission", "GeneOntology", "PSR", "MSP", "structures", "demo", "alphafold")
PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULERS = ("none", "reduce_on_plateau", "step", "cosine")


class ConfigError(ValueError):
    """A config file or override that does not fit the schema (unknown key, wrong type, bad value)."""


# ----------------------------------------------------------------------------------------------- sections
@dataclass
class TransformConfig:
    """Per-protein transforms applied by the dataset (training split; evaluation as noted).

    truncate: keep at most this many residues per protein (ESM-GearNet EC/GO: 550). ``null`` = off.
    truncate_random: training takes a random window of ``truncate`` residues; evaluation always the first
        ``truncate`` residues (TorchDrug's ``TruncateProtein(random=...)``).
    pair_max_residues: mutation pairs (MSP): keep at most this many residues around the mutated site in
        both wild type and mutant (the paper: 1000). ``null`` = off.
    crop: training-split crop for pre-training, ``null`` | ``"subsequence"`` (a random contiguous window of
        ``crop_length`` residues, GearNet's ``SubsequenceNode``). ``crop_radius`` is reserved for spatial crops,
        which the pre-training methods (multiview) do themselves.
    """
    truncate: Optional[int] = None
    truncate_random: bool = True
    pair_max_residues: Optional[int] = None
    crop: Optional[str] = None
    crop_length: int = 50
    crop_radius: float = 15.0


@dataclass
class DataConfig:
    """Which data, where, and how it is batched.

    dataset: one of :data:`DATASETS`: ``EnzymeCommission``, ``GeneOntology`` (+ ``branch`` MF|BP|CC),
        ``PSR``, ``MSP`` (Atom3D), ``structures`` (a folder of PDB/mmCIF files + ``labels`` CSV),
        ``demo`` (built-in, tiny), ``alphafold`` (unlabelled, for pre-training).
    path: the dataset's folder (or cache file). Not needed for ``demo``.
    branch: GeneOntology branch (``MF``, ``BP``, ``CC``).
    labels: CSV of labels for ``structures`` (name column + label columns; see the datasets' docs).
    options: extra keyword arguments for the dataset constructor.
    batch_size: proteins per device per step (the paper: 2 on each of 4 GPUs).
    max_residues: instead of a fixed ``batch_size``, batches of at most this many residues per device
        (length-aware sampler). ``null`` = use ``batch_size``.
    eval_batch_size: proteins per device when evaluating (``null`` = ``batch_size``).
    num_workers / pin_memory / persistent_workers / prefetch_factor: ``DataLoader`` settings.
    """
    dataset: str = "demo"
    path: Optional[str] = None
    branch: Optional[str] = None
    labels: Optional[str] = None
    options: Dict[str, Any] = field(default_factory=dict)
    transforms: TransformConfig = field(default_factory=TransformConfig)
    batch_size: int = 2
    max_residues: Optional[int] = None
    eval_batch_size: Optional[int] = None
    num_workers: int = 0
    pin_memory: bool = True
    persistent_workers: bool = False
    prefetch_factor: Optional[int] = None


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule.

    optimizer: ``adam`` | ``adamw`` | ``sgd``. ``lr`` is the head/structure-encoder rate; the ESM part gets
        ``lr * task.sequence_model_lr_ratio`` (``task.parameter_groups``).
    scheduler: ``none`` | ``reduce_on_plateau`` (on the validation selection metric, ``factor`` /
        ``patience`` / ``min_lr``; the paper: 0.6 / 5) | ``step`` (every ``step_size`` epochs times
        ``gamma``) | ``cosine`` (to ``min_lr`` over ``train.epochs``, after ``warmup_epochs``).
    grad_clip: clip the global gradient norm to this value (``null`` = off).
    """
    optimizer: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    momentum: float = 0.9
    scheduler: str = "none"
    factor: float = 0.6
    patience: int = 5
    min_lr: float = 0.0
    step_size: int = 10
    gamma: float = 0.5
    warmup_epochs: int = 0
    grad_clip: Optional[float] = None


@dataclass
class TrainConfig:
    """The training loop.

    epochs: number of passes over the training set.
    effective_batch_size: proteins per optimizer step over all devices and accumulation steps; the
        accumulation is ``effective_batch_size / (world_size * data.batch_size)`` (so the paper's 4 GPUs x 2
        = 8 is reproduced on one device with 4 accumulation steps). ``null`` = ``gradient_accumulation``.
    gradient_accumulation: micro-batches per optimizer step when ``effective_batch_size`` is ``null``
        (needed with ``data.max_residues``, where a batch has no fixed protein count).
    precision: ``fp32`` | ``bf16`` | ``fp16`` (autocast; ``fp16`` adds a gradient scaler).
    compile: wrap the task in ``torch.compile``.
    gradient_checkpointing: recompute ESM layer activations in backward (less memory).
    seed / deterministic: seeds python, numpy and torch (per rank); ``deterministic`` also asks torch for
        deterministic algorithms (then a resumed run reproduces an uninterrupted one exactly on CPU).
    eval_splits: which of ``valid``/``test`` to evaluate after each epoch (``eval_every`` epochs).
    log_every: optimizer steps between progress logs (the only points where the loss is read back from
        the device).
    checkpoint_every_steps: also write ``checkpoints/last.pt`` every N optimizer steps inside an epoch
        (0 = only at epoch ends); a run killed in between resumes from there with the same batch order.
    max_steps_per_epoch: stop each epoch after this many optimizer steps (debugging / smoke runs).
    device: ``auto`` (the local CUDA device under torchrun, else ``cuda`` when available, else ``cpu``),
        or a torch device string.
    num_threads: CPU threads for torch's intra-op parallelism (``null`` = torch's default, all cores). Small
        models on shared machines run faster with 1: two OpenMP threads competing with another process
        slowed the demo down 10x.
    sync_batchnorm: convert BatchNorm to SyncBatchNorm under multi-GPU DDP.
    find_unused_parameters: DDP's flag. On by default: fine-tuning never uses ESM's language-model head
        and pre-training methods skip other heads, and DDP needs to know. ``false`` saves a graph traversal
        per step when every parameter gets a gradient.
    """
    epochs: int = 10
    effective_batch_size: Optional[int] = None
    gradient_accumulation: int = 1
    precision: str = "fp32"
    compile: bool = False
    gradient_checkpointing: bool = False
    seed: int = 0
    deterministic: bool = False
    eval_splits: List[str] = field(default_factory=lambda: ["valid", "test"])
    eval_every: int = 1
    log_every: int = 50
    checkpoint_every_steps: int = 0
    max_steps_per_epoch: Optional[int] = None
    device: str = "auto"
    num_threads: Optional[int] = None
    sync_batchnorm: bool = True
    find_unused_parameters: bool = True


@dataclass
class RunConfig:
    """The run folder and loggers.

    out_dir: the run folder (``null`` = ``runs/<name>-<UTC timestamp>``; ``name`` = the config file's stem).
    resume: continue the run in ``out_dir`` from ``checkpoints/last.pt`` (same as ``--resume RUN_DIR``).
    init_checkpoint: start from these weights (a published ESM-GearNet ``.pth``, a pre-training output, or
        another run's ``best.pt``); architecture mismatches fail naming the keys.
    init_strict: every model key must be present in ``init_checkpoint`` (heads may be missing when ``false``).
    tensorboard: write TensorBoard events (when installed). wandb: a W&B project name (``null`` = off).
    progress: tqdm progress bars on rank 0.
    debug_checksums: after every optimizer step each rank appends a parameter checksum to
        ``debug/checksums-rank<R>.txt`` (to verify DDP keeps ranks identical).
    """
    out_dir: Optional[str] = None
    name: Optional[str] = None
    resume: bool = False
    init_checkpoint: Optional[str] = None
    init_strict: bool = False
    tensorboard: bool = True
    wandb: Optional[str] = None
    wandb_entity: Optional[str] = None
    progress: bool = True
    debug_checksums: bool = False


@dataclass
class Config:
    """A whole run: ``data``, ``model``, ``task``, ``optim``, ``train``, ``run``."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)


# ----------------------------------------------------------------------------------------------- loading
def _valid_keys(schema: Any, dotted: str) -> List[str]:
    """The valid keys of the section that ``dotted`` points into (for error messages)."""
    parts = [p for p in dotted.split(".") if p]
    cls = schema if isinstance(schema, type) else type(schema)
    prefix = []
    for p in parts[:-1]:
        sub = {f.name: f for f in fields(cls)}.get(p)
        if sub is None or not is_dataclass(sub.default_factory() if callable(sub.default_factory) else None):
            break
        cls = type(sub.default_factory())
        prefix.append(p)
    names = [f.name for f in fields(cls)]
    return [".".join(prefix + [n]) for n in names]


def _unknown_key_error(schema: Any, key: str, source: str) -> ConfigError:
    valid = _valid_keys(schema, key)
    close = difflib.get_close_matches(key, valid, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"{source}: unknown config key '{key}'.{hint} Valid keys here: {', '.join(valid)}")


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except ConfigKeyError as e:
        key = e.full_key or str(e.key)
        raise _unknown_key_error(Config, key, source) from None
    except ValidationError as e:
        raise ConfigError(f"{source}: bad value for '{e.full_key}': {str(e.msg).splitlines()[0]}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{source}: {e}") from None


def _walk_unknown(node: Any, cls: type, prefix: str, source: str) -> None:
    """Unknown keys in a plain mapping, checked before merging so the error names the full dotted key."""
    if not isinstance(node, dict) or not is_dataclass(cls):
        return
    known = {f.name: f for f in fields(cls)}
    for k, v in node.items():
        dotted = f"{prefix}{k}"
        if k not in known:
            raise _unknown_key_error(Config, dotted, source)
        f = known[k]
        default = f.default_factory() if callable(f.default_factory) else f.default
        if is_dataclass(default) and isinstance(v, dict):
            _walk_unknown(v, type(default), dotted + ".", source)


def load_config(path: Optional[Union[str, os.PathLike]] = None, overrides: Sequence[str] = (),
                base: Optional[Union[Config, Dict[str, Any]]] = None) -> Config:
    """Defaults <- ``base`` (a dict or Config, e.g. a checkpoint's) <- YAML ``path`` <- ``key=value`` overrides.

    Returns a :class:`Config` (typed dataclass instance). Raises :class:`ConfigError` for unknown keys
    (listing the valid ones), wrong types and malformed overrides; ``FileNotFoundError`` for a missing file.
    """
    cfg = OmegaConf.structured(Config)
    if base is not None:
        plain = config_to_dict(base) if not isinstance(base, dict) else base
        _walk_unknown(plain, Config, "", "base config")
        cfg = _merge(cfg, plain, "base config")
    if path is not None:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            loaded = OmegaConf.load(path)
        except Exception as e:  # yaml errors
            raise ConfigError(f"{path}: not a valid YAML config: {e}") from None
        plain = OmegaConf.to_container(loaded, resolve=False) or {}
        if not isinstance(plain, dict):
            raise ConfigError(f"{path}: a config file must be a mapping of sections "
                              f"({', '.join(f.name for f in fields(Config))}), got {type(plain).__name__}")
        _walk_unknown(plain, Config, "", path)
        cfg = _merge(cfg, plain, path)
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. optim.lr=3e-4)")
        key = item.split("=", 1)[0].strip()
        try:
            dot = OmegaConf.from_dotlist([item])
        except Exception as e:
            raise ConfigError(f"override '{item}': {e}") from None
        plain = OmegaConf.to_container(dot, resolve=False)
        _walk_unknown(plain, Config, "", f"override '{item}'")
        value = OmegaConf.select(dot, key)
        node = OmegaConf.select(cfg, key, default=None)
        if isinstance(node, DictConfig) and OmegaConf.get_type(node) is dict and isinstance(value, DictConfig):
            # a free-form mapping (data.options, model.structure_options): the override replaces it, so
            # `data.options={}` clears options inherited from the file
            OmegaConf.update(cfg, key, value, merge=False)
        else:
            cfg = _merge(cfg, plain, f"override '{key}'")
    try:
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(f"config does not resolve: {e}") from None
    validate(obj)
    return obj


def _check_choice(value: Any, choices: Sequence[str], key: str) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(str, choices))}")


def validate(cfg: Config) -> None:
    """Value checks beyond types (choices, positive sizes). Raises :class:`ConfigError`."""
    _check_choice(cfg.data.dataset, DATASETS, "data.dataset")
    _check_choice(cfg.train.precision, PRECISIONS, "train.precision")
    _check_choice(cfg.optim.scheduler, SCHEDULERS, "optim.scheduler")
    _check_choice(cfg.optim.optimizer, ("adam", "adamw", "sgd"), "optim.optimizer")
    if cfg.data.transforms.crop is not None:
        _check_choice(cfg.data.transforms.crop, ("subsequence",), "data.transforms.crop")
    for s in cfg.train.eval_splits:
        _check_choice(s, ("valid", "test"), "train.eval_splits[]")
    positive = {"data.batch_size": cfg.data.batch_size, "train.epochs": cfg.train.epochs,
                "train.gradient_accumulation": cfg.train.gradient_accumulation,
                "train.log_every": cfg.train.log_every, "train.eval_every": cfg.train.eval_every}
    for opt in ("data.max_residues", "data.eval_batch_size", "train.effective_batch_size",
                "data.transforms.truncate", "data.transforms.pair_max_residues", "train.max_steps_per_epoch"):
        sec, *rest = opt.split(".")
        v = getattr(cfg, sec)
        for r in rest:
            v = getattr(v, r)
        if v is not None:
            positive[opt] = v
    for k, v in positive.items():
        if v <= 0:
            raise ConfigError(f"{k} must be positive, got {v}")
    if cfg.train.checkpoint_every_steps < 0 or cfg.data.num_workers < 0:
        raise ConfigError("train.checkpoint_every_steps and data.num_workers must be >= 0")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr must be positive, got {cfg.optim.lr}")
    if cfg.optim.grad_clip is not None and cfg.optim.grad_clip <= 0:
        raise ConfigError(f"optim.grad_clip must be positive or null, got {cfg.optim.grad_clip}")


def config_to_dict(cfg: Union[Config, DictConfig, Dict[str, Any]]) -> Dict[str, Any]:
    """A plain ``dict`` (only str/int/float/bool/None/list/dict) — what checkpoints store."""
    if isinstance(cfg, dict):
        return cfg
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
    return OmegaConf.to_container(node, resolve=True)


def config_from_dict(plain: Dict[str, Any]) -> Config:
    """The inverse of :func:`config_to_dict` (validated against the current schema)."""
    return load_config(base=plain)


def save_config(cfg: Union[Config, Dict[str, Any]], path: Union[str, os.PathLike]) -> None:
    """Writes the resolved config as YAML, atomically (tmp file + fsync + rename)."""
    from .checkpoint import atomic_write_bytes
    text = OmegaConf.to_yaml(OmegaConf.create(config_to_dict(cfg)))
    atomic_write_bytes(path, text.encode())
