"""Loads the compiled extension ``esmgear_fast._C`` and checks it was built for this torch.

The extension is compiled at install time (``pip install --no-build-isolation -e .``); nothing is
compiled at import. A binary built against another torch cannot be loaded safely, so importing the
package fails with instructions instead of an undefined-symbol error from the dynamic loader.
"""
import torch

REBUILD_HINT = (
    "Rebuild it against the installed torch from the esmgear_fast source directory with "
    "`pip install --no-build-isolation -e .` (add FORCE_CUDA=1 for the CUDA kernels)."
)

try:
    from . import _build_info
except ImportError as exc:  # pragma: no cover - only without a build
    raise ImportError(
        "esmgear_fast's compiled extension has not been built (esmgear_fast/_build_info.py is missing). "
        + REBUILD_HINT
    ) from exc

if _build_info.TORCH_VERSION != torch.__version__:
    raise ImportError(
        f"esmgear_fast's compiled extension was built for torch {_build_info.TORCH_VERSION}, "
        f"but torch {torch.__version__} is installed. " + REBUILD_HINT
    )

try:
    from . import _C  # noqa: F401  (registers the torch.ops.esmgear_fast.* kernels)
except ImportError as exc:
    raise ImportError(f"esmgear_fast's compiled extension failed to load ({exc}). " + REBUILD_HINT) from exc

WITH_CUDA: bool = bool(_build_info.WITH_CUDA)
"""True when the CUDA kernels were compiled into the extension."""
