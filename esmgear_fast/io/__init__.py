"""Structure I/O: PDB/mmCIF files (optionally gzip-compressed) -> :class:`Protein`.

Main entry points: :func:`load_structure`, :meth:`Protein.from_arrays`, :class:`StructureParseError`.
The residue vocabulary (TorchDrug order, unknown = 20) lives in :mod:`esmgear_fast.io.residues`.

Example::

    from esmgear_fast.io import Protein, StructureParseError, load_structure

    p = load_structure("1abc.cif.gz", chains=["A", "B"])    # first model, author chain IDs
    p.sequence, p.pos.shape, p.backbone.shape               # 'MKV...', (L, 3), (L, 4, 3)
    q = Protein.from_arrays("MKV", ca_xyz, plddt=plddt)      # e.g. a structure predictor's output

PDB files are read by a fast line reader (:mod:`esmgear_fast.io.pdb_fast`); ``parser="biopython"``
reads them with Biopython's ``PDBParser`` instead (identical results, several times slower). mmCIF files
are read with Biopython's ``MMCIFParser``.
"""
from .errors import ChainNotFoundError, StructureParseError
from .protein import Protein
from .residues import (
    BACKBONE_ATOMS,
    MODIFIED_RESIDUES,
    NUM_RESIDUE_TYPES,
    RESIDUE_NAMES,
    RESIDUE_SYMBOLS,
    UNKNOWN_RESIDUE,
    residue_name_to_symbol,
    sequence_to_residue_type,
)
from .structure import (
    STRUCTURE_SUFFIXES,
    arrays_to_protein,
    detect_format,
    is_structure_file,
    load_structure,
    read_structure_arrays,
    structure_name,
)

__all__ = [
    "BACKBONE_ATOMS",
    "ChainNotFoundError",
    "MODIFIED_RESIDUES",
    "NUM_RESIDUE_TYPES",
    "Protein",
    "RESIDUE_NAMES",
    "RESIDUE_SYMBOLS",
    "STRUCTURE_SUFFIXES",
    "StructureParseError",
    "UNKNOWN_RESIDUE",
    "arrays_to_protein",
    "detect_format",
    "is_structure_file",
    "load_structure",
    "read_structure_arrays",
    "residue_name_to_symbol",
    "sequence_to_residue_type",
    "structure_name",
]
