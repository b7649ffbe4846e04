"""The training engine shared by fine-tuning and pre-training: typed configs, the loop, checkpoints,
distributed setup and run logging."""
from .config import Config, ConfigError, load_config, save_config

__all__ = ["Config", "ConfigError", "load_config", "save_config"]
