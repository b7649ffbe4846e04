"""esmgear_fast: fast joint protein sequence + structure representation learning."""
from . import _extension  # noqa: F401  (fails early, with instructions, if the build is stale)
from . import backend, nn, ops, reference
from .backend import BackendUnavailableError, get_backend, use_backend

__version__ = "0.1.0.dev0"

__all__ = ["BackendUnavailableError", "backend", "get_backend", "nn", "ops", "reference", "use_backend", "__version__"]
