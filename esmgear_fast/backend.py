"""Choosing which implementation of an op runs.

Backends:

============  ==============================================================================
reference     plain PyTorch, the definition of correct; runs anywhere, slowest
extension     C++ (CPU) and CUDA (GPU) kernels compiled into ``esmgear_fast._C`` at install
triton        Triton kernels (``esmgear_fast.kernels``) for GPUs; on CPU only under
              ``TRITON_INTERPRET=1`` (used by the tests)
auto          the fastest backend available for the op and the input's device
============  ==============================================================================

The backend is chosen per call (``backend=`` argument), by the :func:`use_backend` context
manager, or by the ``ESMGEAR_FAST_BACKEND`` environment variable, in that order of precedence.
Asking for a backend that an op does not have, or that is not available for the input's device,
raises :class:`BackendUnavailableError`; ``auto`` never silently falls back to something slower
than the op's compiled kernel without saying so (it warns once).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Callable, Dict, Iterator, Optional, Sequence

import torch

BACKENDS = ("auto", "reference", "extension", "triton")
ENV_VAR = "ESMGEAR_FAST_BACKEND"


class BackendUnavailableError(RuntimeError):
    """The requested backend does not exist for this op or this device."""


def _validate(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


_default = _validate(os.environ.get(ENV_VAR, "auto"))


def get_backend() -> str:
    """The backend used when a call passes ``backend=None``."""
    return _default


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the enclosed code with ``name`` as the default backend of every op."""
    global _default
    previous, _default = _default, _validate(name)
    try:
        yield
    finally:
        _default = previous


def extension_available(device: torch.device) -> bool:
    from . import _extension

    if device.type == "cpu":
        return True
    return device.type == "cuda" and _extension.WITH_CUDA


def triton_available(device: torch.device) -> bool:
    if device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET", "0") != "1":
            return False
    elif device.type != "cuda":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


AVAILABILITY: Dict[str, Callable[[torch.device], bool]] = {
    "reference": lambda device: True,
    "extension": extension_available,
    "triton": triton_available,
}

_warned = set()


def resolve(op: str, requested: Optional[str], device: torch.device, offered: Sequence[str]) -> str:
    """Turns a requested backend into the concrete one to run.

    ``offered`` lists the backends this op implements, fastest first, ending with "reference".
    """
    name = _validate(requested if requested is not None else _default)
    if name != "auto":
        if name not in offered:
            raise BackendUnavailableError(
                f"{op} has no {name!r} backend; it offers {', '.join(offered)} (or 'auto')"
            )
        if not AVAILABILITY[name](device):
            hint = {
                "extension": "the extension was built without CUDA kernels; rebuild with "
                "FORCE_CUDA=1 pip install --no-build-isolation -e .",
                "triton": "install triton (on CPU also set TRITON_INTERPRET=1 before importing it)",
            }.get(name, "")
            raise BackendUnavailableError(f"{op}: backend {name!r} is not available on {device}: {hint}")
        return name
    for candidate in offered:
        if AVAILABILITY[candidate](device):
            if candidate == "reference" and len(offered) > 1 and (op, device.type) not in _warned:
                _warned.add((op, device.type))
                warnings.warn(
                    f"{op}: no compiled backend ({', '.join(offered[:-1])}) is available on "
                    f"{device.type}; backend='auto' runs the slow plain-PyTorch reference",
                    stacklevel=3,
                )
            return candidate
    raise BackendUnavailableError(f"{op}: no backend available on {device}")  # pragma: no cover
