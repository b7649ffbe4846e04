"""Pre-training methods of ESM-GearNet as engine tasks (contract 2), one per file.

=================  ==========================================================================
``residue_type``   :class:`ResidueTypePrediction` (TorchDrug ``AttributeMasking``)
``distance``       :class:`DistancePrediction`
``angle``          :class:`AnglePrediction`
``dihedral``       :class:`DihedralPrediction`
``multiview``      :class:`MultiviewContrast` (TorchDrug ``MultiviewContrast`` + ``Unsupervised``)
``siamdiff``       :class:`SiamDiff` (residue level)
=================  ==========================================================================

``build_pretrain_task(name, model, **options)`` builds one around a ``FusionNetwork``; unknown names or
options raise :class:`ValueError` listing the valid ones. Run them with ``python -m esmgear_fast.pretrain``.
"""
from __future__ import annotations

import inspect
from typing import Any, Dict, Optional

from ._base import PretrainTask, TaskOutput
from .angle import AnglePrediction, angle_bins
from .dihedral import DihedralPrediction, dihedral_bins
from .distance import DistancePrediction
from .multiview import MultiviewContrast, info_nce
from .residue_type import ResidueTypePrediction
from .siamdiff import SiamDiff, noise_schedule

METHODS = {
    "residue_type": ResidueTypePrediction,
    "distance": DistancePrediction,
    "angle": AnglePrediction,
    "dihedral": DihedralPrediction,
    "multiview": MultiviewContrast,
    "siamdiff": SiamDiff,
}

__all__ = ["METHODS", "PretrainTask", "TaskOutput", "build_pretrain_task", "method_options",
           "ResidueTypePrediction", "DistancePrediction", "AnglePrediction", "DihedralPrediction",
           "MultiviewContrast", "SiamDiff", "angle_bins", "dihedral_bins", "info_nce", "noise_schedule"]


def method_options(name: str) -> Dict[str, Any]:
    """The options of method ``name`` with their defaults (ESM-GearNet's hyper-parameters)."""
    cls = _method(name)
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]   # skip self, model
    return {p.name: p.default for p in params}


def _method(name: str):
    if name not in METHODS:
        raise ValueError(f"unknown pre-training method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def build_pretrain_task(name: str, model, options: Optional[Dict[str, Any]] = None, **kwargs) -> PretrainTask:
    """The pre-training task ``name`` around ``model`` (a ``FusionNetwork``); ``options``/``kwargs`` override
    :func:`method_options`. Unknown options raise :class:`ValueError` naming the valid ones."""
    cls = _method(name)
    opts = dict(options or {}, **kwargs)
    valid = method_options(name)
    unknown = sorted(set(opts) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for pre-training method {name!r}; valid: {sorted(valid)}")
    return cls(model, **opts)
