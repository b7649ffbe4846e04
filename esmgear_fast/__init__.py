"""esmgear_fast: fast joint protein sequence + structure representation learning."""
from . import _extension  # noqa: F401  (fails early, with instructions, if the build is stale)
from . import backend, nn, ops, reference
from .backend import BackendUnavailableError, get_backend, use_backend

__version__ = "0.1.0.dev0"

__all__ = ["BackendUnavailableError", "backend", "get_backend", "nn", "ops", "reference", "use_backend", "__version__"]


def __getattr__(name):
    # Lazy, so `python -m esmgear_fast.embed` does not find the module already imported (runpy warns).
    if name == "embed":  # the module is callable: esmgear_fast.embed(paths, model, per_residue=False, ...)
        import importlib

        return importlib.import_module(".embed", __name__)
    raise AttributeError(f"module 'esmgear_fast' has no attribute {name!r}")
