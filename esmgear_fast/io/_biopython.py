"""Biopython-based readers (``Bio.PDB.PDBParser`` and ``Bio.PDB.MMCIFParser``) producing residue records.

The Biopython structure of the first model is walked with every alternate location and every
point-mutation variant unpacked, and the same selection rules as the fast reader are applied by
:mod:`esmgear_fast.io._assemble`, so both paths give identical proteins.
"""
from __future__ import annotations

import io
import math
import warnings
from typing import List, Tuple

from ._assemble import BACKBONE_SLOT, ResidueRecord, normalize_icode
from .errors import StructureParseError

__all__ = ["read_biopython_records"]


def _parse(text: str, fmt: str, path: str, name: str):
    from Bio.PDB import MMCIFParser, PDBParser

    parser = PDBParser(QUIET=True, PERMISSIVE=True) if fmt == "pdb" else MMCIFParser(QUIET=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return parser.get_structure(name, io.StringIO(text))
        except Exception as exc:  # Biopython raises many types (ValueError, KeyError, PDBConstructionException)
            kind = "PDB" if fmt == "pdb" else "mmCIF"
            hint = "" if text.endswith("\n") else " (the file does not end with a newline: truncated?)"
            raise StructureParseError(path, f"{kind} parsing failed: {type(exc).__name__}: {exc}{hint}") from exc


def read_biopython_records(text: str, fmt: str, path: str, name: str) -> Tuple[List[ResidueRecord], List[str]]:
    """Parses ``text`` (``fmt`` = ``"pdb"`` or ``"cif"``) with Biopython; returns records of the first model."""
    structure = _parse(text, fmt, path, name)
    model = next(iter(structure), None)
    if model is None:
        raise StructureParseError(path, "no atom records (no model) found")
    records: List[ResidueRecord] = []
    chain_order: List[str] = []
    slots = BACKBONE_SLOT
    for chain in model:
        chain_name = str(chain.id).strip()
        if chain_name not in chain_order:
            chain_order.append(chain_name)
        for residue in chain.get_unpacked_list():
            _, resseq, icode = residue.id
            rec = ResidueRecord(chain_name, int(resseq), normalize_icode(icode), residue.get_resname().strip())
            for atom in residue.get_unpacked_list():
                slot = slots.get(atom.get_name().strip())
                if slot is None:
                    continue
                x, y, z = (float(v) for v in atom.get_coord())
                if not (math.isfinite(x) and math.isfinite(y) and math.isfinite(z)):
                    raise StructureParseError(path, f"non-finite coordinates for atom {atom.get_full_id()}")
                occupancy = atom.get_occupancy()
                occupancy = 1.0 if occupancy is None else float(occupancy)
                bfactor = atom.get_bfactor()
                bfactor = 0.0 if bfactor is None else float(bfactor)
                rec.add_atom(slot, occupancy, x, y, z, bfactor)
            records.append(rec)
    return records, chain_order
