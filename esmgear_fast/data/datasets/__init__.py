"""Datasets: every one returns dict samples (see :mod:`esmgear_fast.data.samples`) and exposes ``split()``,
``lengths``, ``tasks``, ``task_type`` and ``names``.

* :class:`EnzymeCommission`, :class:`GeneOntology` — DeepFRI's EC / GO sets as TorchDrug 0.2.1 has them.
* :class:`StructureDataset` — your own folder / glob / list of PDB or mmCIF files with an optional label CSV.
"""
from ._base import ProteinDataset
from .deepfri import EnzymeCommission, GeneOntology
from .structures import StructureDataset

__all__ = ["EnzymeCommission", "GeneOntology", "ProteinDataset", "StructureDataset"]
