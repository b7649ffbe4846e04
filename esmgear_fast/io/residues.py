"""Residue vocabulary shared by the parsers, :class:`~esmgear_fast.io.Protein` and the models.

Index order
-----------
The 20 standard amino acids are numbered in **TorchDrug's order** (``torchdrug.data.Protein.residue2id``),
because pretrained GearNet checkpoints one-hot encode residue types in that order::

    index  0  1  2  3  4  5  6  7  8  9 10 11 12 13 14 15 16 17 18 19 | 20
    letter G  A  S  P  V  T  C  I  L  N  D  Q  K  E  M  H  F  R  Y  W  | X (unknown)

Index 20 (:data:`UNKNOWN_RESIDUE`, letter ``'X'``) is the unknown type, so a one-hot residue feature has
:data:`NUM_RESIDUE_TYPES` = 21 columns.

Residue-name classification used by the structure parsers
---------------------------------------------------------
* the 20 standard three-letter names map to their own index;
* names in :data:`MODIFIED_RESIDUES` (modified, D-form or force-field-specific variants of an amino acid)
  map to the *parent* amino acid, both in ``residue_type`` and in the one-letter sequence
  (e.g. ``MSE`` -> ``M``; selenocysteine ``SEC`` -> ``C``, its closest standard relative);
* ``UNK`` is an amino acid of unknown identity -> ``X`` (20);
* names in :data:`WATER_NAMES` are always skipped;
* any other name is treated as an (unknown, ``X``) amino acid only if the residue has all of the ``N``,
  ``CA`` and ``C`` atoms *and* is peptide-bonded to the previous or next residue of its chain (C-N distance
  at most 2.0 A), so unlisted modified residues inside a chain are kept while amino-acid-like ligands
  (e.g. ``SAH``) are not; everything else (ligands, ions, nucleotides, caps, sugars) is skipped silently.
  Known names (standard, :data:`MODIFIED_RESIDUES`, ``UNK``) are kept without the bond check, so a free
  amino acid bound as a ligand is kept as a residue of its chain.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

#: One-letter codes of the 20 standard amino acids, in TorchDrug's index order.
RESIDUE_SYMBOLS = "GASPVTCILNDQKEMHFRYW"
#: Three-letter names of the 20 standard amino acids, in the same order.
RESIDUE_NAMES = (
    "GLY", "ALA", "SER", "PRO", "VAL", "THR", "CYS", "ILE", "LEU", "ASN",
    "ASP", "GLN", "LYS", "GLU", "MET", "HIS", "PHE", "ARG", "TYR", "TRP",
)
#: Index of the unknown residue type.
UNKNOWN_RESIDUE = 20
#: One-letter code of the unknown residue type.
UNKNOWN_SYMBOL = "X"
#: Number of residue types including the unknown type (width of a one-hot residue feature).
NUM_RESIDUE_TYPES = 21
#: Backbone atom names in the order of ``Protein.backbone[:, k]``.
BACKBONE_ATOMS = ("N", "CA", "C", "O")

#: Standard three-letter name -> one-letter code.
THREE_TO_ONE: Dict[str, str] = dict(zip(RESIDUE_NAMES, RESIDUE_SYMBOLS))
#: One-letter code -> index (the 20 standard letters and ``'X'``).
SYMBOL_TO_INDEX: Dict[str, int] = {s: i for i, s in enumerate(RESIDUE_SYMBOLS)}
SYMBOL_TO_INDEX[UNKNOWN_SYMBOL] = UNKNOWN_RESIDUE
#: Index -> one-letter code.
INDEX_TO_SYMBOL = RESIDUE_SYMBOLS + UNKNOWN_SYMBOL

#: Non-standard amino-acid residue names mapped to their parent amino acid.
#: Sources of the parent assignment: the parent component given in the PDB chemical component dictionary
#: for the modified residues, and the usual force-field conventions for protonation-state names.
MODIFIED_RESIDUES: Dict[str, str] = {
    # selenium analogues
    "MSE": "MET",  # selenomethionine
    "SEC": "CYS",  # selenocysteine (no standard 21st type here; cysteine is the closest relative)
    "CSE": "CYS",  # selenocysteine (alternative name)
    # phosphorylation
    "SEP": "SER", "TPO": "THR", "PTR": "TYR", "NEP": "HIS", "HIP": "HIS",
    # lysine modifications
    "MLY": "LYS", "M3L": "LYS", "MLZ": "LYS", "ALY": "LYS", "KCX": "LYS", "LLP": "LYS",
    # cysteine modifications
    "CSO": "CYS", "CSD": "CYS", "CSS": "CYS", "CME": "CYS", "OCS": "CYS", "CSX": "CYS", "SMC": "CYS",
    "CAS": "CYS", "SCH": "CYS", "SCY": "CYS", "CCS": "CYS",
    # other common modifications
    "HYP": "PRO", "MHO": "MET", "SME": "MET", "FME": "MET", "TYS": "TYR", "PCA": "GLU", "CGU": "GLU", "MEN": "ASN",
    "HIC": "HIS", "SAC": "SER", "AIB": "ALA", "NLE": "LEU", "ABA": "ALA", "DAH": "PHE", "TRQ": "TRP",
    # D-amino acids
    "DAL": "ALA", "DAR": "ARG", "DSG": "ASN", "DAS": "ASP", "DCY": "CYS", "DGN": "GLN", "DGL": "GLU",
    "DHI": "HIS", "DIL": "ILE", "DLE": "LEU", "DLY": "LYS", "MED": "MET", "DPN": "PHE", "DPR": "PRO",
    "DSN": "SER", "DTH": "THR", "DTR": "TRP", "DTY": "TYR", "DVA": "VAL",
    # protonation / tautomer names written by MD force fields (CHARMM, Amber, GROMOS, OPLS)
    "HSD": "HIS", "HSE": "HIS", "HSP": "HIS", "HID": "HIS", "HIE": "HIS", "HIH": "HIS",
    "HISA": "HIS", "HISB": "HIS", "HISD": "HIS", "HISE": "HIS", "HISH": "HIS",
    "CYX": "CYS", "CYM": "CYS", "CYS2": "CYS", "ASH": "ASP", "ASPP": "ASP", "ASPH": "ASP",
    "GLH": "GLU", "GLUP": "GLU", "GLUH": "GLU", "LYN": "LYS", "LSN": "LYS", "LYSH": "LYS",
}

#: Residue names of water (always skipped).
WATER_NAMES = frozenset({"HOH", "WAT", "H2O", "DOD", "D2O", "TIP", "TIP3", "TIP4", "TIP5", "TP3", "T3P",
                         "T4P", "SOL", "SPC", "OH2"})

#: Residue names that denote an amino acid of unknown identity.
UNKNOWN_AMINO_ACID_NAMES = frozenset({"UNK"})

# Residue name -> one-letter code for every name known to be an amino acid.
_NAME_TO_SYMBOL: Dict[str, str] = dict(THREE_TO_ONE)
_NAME_TO_SYMBOL.update({name: THREE_TO_ONE[parent] for name, parent in MODIFIED_RESIDUES.items()})
_NAME_TO_SYMBOL.update({name: UNKNOWN_SYMBOL for name in UNKNOWN_AMINO_ACID_NAMES})


def residue_name_to_symbol(name: str) -> Optional[str]:
    """One-letter code of a known amino-acid residue name, ``None`` for any other name.

    Standard names give their letter, names in :data:`MODIFIED_RESIDUES` give the parent's letter and
    ``UNK`` gives ``'X'``. The lookup is case-sensitive after stripping blanks (PDB names are upper case).
    """
    return _NAME_TO_SYMBOL.get(name.strip())


def normalize_sequence(sequence: str) -> str:
    """Upper-cases ``sequence`` and replaces every letter outside the 20 standard ones by ``'X'``.

    Raises :class:`ValueError` for characters that are not ASCII letters (gaps, digits, whitespace, '*').
    """
    if not isinstance(sequence, str):
        raise TypeError(f"sequence must be a str, got {type(sequence).__name__}")
    upper = sequence.upper()
    for i, ch in enumerate(upper):
        if not ("A" <= ch <= "Z"):
            raise ValueError(
                f"sequence contains the character {ch!r} at index {i}; only letters A-Z are allowed "
                "(unknown letters such as B, Z, U, O, J are mapped to 'X')"
            )
    return "".join(ch if ch in SYMBOL_TO_INDEX else UNKNOWN_SYMBOL for ch in upper)


_SYMBOL_LUT = torch.full((128,), UNKNOWN_RESIDUE, dtype=torch.long)
for _s, _i in SYMBOL_TO_INDEX.items():
    _SYMBOL_LUT[ord(_s)] = _i


def sequence_to_residue_type(sequence: str) -> torch.Tensor:
    """Residue-type indices (int64, TorchDrug order, unknown = 20) of a normalized one-letter sequence."""
    if not sequence:
        return torch.zeros(0, dtype=torch.long)
    codes = torch.frombuffer(bytearray(sequence.encode("ascii")), dtype=torch.uint8).long()
    return _SYMBOL_LUT[codes.clamp_max(127)]


def residue_type_to_sequence(residue_type) -> str:
    """Inverse of :func:`sequence_to_residue_type`; indices outside 0..20 raise :class:`ValueError`."""
    values = torch.as_tensor(residue_type).reshape(-1).tolist()
    bad = [v for v in values if not 0 <= v < NUM_RESIDUE_TYPES]
    if bad:
        raise ValueError(f"residue type {bad[0]} is outside 0..{NUM_RESIDUE_TYPES - 1}")
    return "".join(INDEX_TO_SYMBOL[v] for v in values)
