"""Datasets: every one returns dict samples (see :mod:`esmgear_fast.data.samples`) and exposes ``split()``,
``lengths``, ``tasks``, ``task_type`` and ``names``.

* :class:`EnzymeCommission`, :class:`GeneOntology` — DeepFRI's EC / GO sets as TorchDrug 0.2.1 has them.
* :class:`StructureDataset` — your own folder / glob / list of PDB or mmCIF files with an optional label CSV.
* :class:`PSR`, :class:`MSP` — Atom3D's LMDB releases, read with ``lmdb`` directly (no atom3d dependency).
* :class:`AlphaFoldDB`, :class:`AlphaFoldDBStream`, :class:`FoldCompDB` — AlphaFold DB proteome shards for
  pre-training (cached, or streamed member by member).
"""
from ._base import ProteinDataset
from .deepfri import EnzymeCommission, GeneOntology
from .structures import StructureDataset
from .atom3d import MSP, PSR, write_atom3d_lmdb
from .alphafold import MODEL_ORGANISMS, AlphaFoldDB, AlphaFoldDBStream, FoldCompDB

__all__ = ["AlphaFoldDB", "AlphaFoldDBStream", "EnzymeCommission", "FoldCompDB", "GeneOntology", "MODEL_ORGANISMS",
           "MSP", "PSR", "ProteinDataset", "StructureDataset", "write_atom3d_lmdb"]
