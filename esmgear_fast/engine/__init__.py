"""The training engine shared by fine-tuning and pre-training: typed configs (:mod:`.config`), the loop
(:class:`Engine`), atomic resumable checkpoints and :func:`load_task` (:mod:`.checkpoint`), torchrun/DDP
setup (:mod:`.distributed`) and run-folder logging (:mod:`.logging`).

Command line: ``python -m esmgear_fast.train`` (see :mod:`esmgear_fast.train`).
"""
from .checkpoint import CheckpointError, load_checkpoint, load_init_weights, load_task
from .config import Config, ConfigError, load_config, save_config
from .distributed import DistInfo, init_distributed
from .loop import BatchOutOfMemoryError, Engine, NonFiniteLossError, seed_everything

__all__ = ["BatchOutOfMemoryError", "CheckpointError", "Config", "ConfigError", "DistInfo", "Engine",
           "NonFiniteLossError", "init_distributed", "load_checkpoint", "load_config", "load_init_weights",
           "load_task", "save_config", "seed_everything"]
