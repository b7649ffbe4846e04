"""Turns per-residue atom records from any reader into protein arrays (shared by every parser path).

Every reader (the fast PDB reader, the Biopython PDB and mmCIF walkers) produces the same intermediate:

* ``chain_order``: chain IDs in order of first appearance in the (first) model;
* ``records``: one :class:`ResidueRecord` per residue (``chain, resseq, icode, resname``) in order of first
  appearance, carrying only the backbone atoms ``N, CA, C, O`` after alternate-location resolution.

Alternate locations (one rule for every reader): for each backbone atom name of a residue, the record with
the highest occupancy wins; on a tie the record that comes first in the file wins (``A`` before ``B`` in
the usual ordering). A missing or unparseable occupancy counts as 1.0.

Everything after that (which residues are amino acids, microheterogeneity, the C-alpha requirement, chain
selection) happens here, so all readers follow identical rules.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np

from .errors import ChainNotFoundError, StructureParseError
from .residues import _NAME_TO_SYMBOL, UNKNOWN_SYMBOL, WATER_NAMES

# slot of each backbone atom in ResidueRecord.atoms
BACKBONE_SLOT: Dict[str, int] = {"N": 0, "CA": 1, "C": 2, "O": 3}
_NAN = math.nan


_CANDIDATE = object()  # marker: unknown residue name, decided by peptide-bond distance
#: Largest C(i)-N(i+1) distance (Angstrom) counted as a peptide bond (ideal 1.33 A).
PEPTIDE_BOND_MAX = 2.0


def _bonded(c_atom, n_atom) -> bool:
    if c_atom is None or n_atom is None:
        return False
    dx, dy, dz = c_atom[1] - n_atom[1], c_atom[2] - n_atom[2], c_atom[3] - n_atom[3]
    return dx * dx + dy * dy + dz * dz <= PEPTIDE_BOND_MAX * PEPTIDE_BOND_MAX


class ResidueRecord:
    """One residue as read from a file: identity plus the selected backbone atoms.

    ``atoms[k]`` is ``None`` or a tuple ``(occupancy, x, y, z, bfactor)`` for backbone slot ``k``.
    """

    __slots__ = ("chain", "resseq", "icode", "resname", "atoms")

    def __init__(self, chain: str, resseq: int, icode: str, resname: str):
        self.chain = chain
        self.resseq = resseq
        self.icode = icode
        self.resname = resname
        self.atoms: List[Optional[tuple]] = [None, None, None, None]

    def add_atom(self, slot: int, occupancy: float, x: float, y: float, z: float, bfactor: float) -> None:
        current = self.atoms[slot]
        if current is None or occupancy > current[0]:
            self.atoms[slot] = (occupancy, x, y, z, bfactor)


def normalize_icode(icode: str) -> str:
    """One-character insertion code, ``' '`` for none (mmCIF writes ``?`` or ``.``)."""
    icode = (icode or "").strip()
    if icode in ("", "?", "."):
        return " "
    return icode[0]


def assemble(
    records: Sequence[ResidueRecord],
    chain_order: Sequence[str],
    *,
    path: str,
    name: str,
    chains: Optional[Sequence[str]] = None,
    use_bfactor_as_plddt: bool = False,
) -> dict:
    """Applies the residue rules and returns a dict of numpy arrays (see :func:`arrays_to_protein`)."""
    chain_rank = {c: i for i, c in enumerate(chain_order)}

    # 1. classify: amino acids (known names, or unknown names with N, CA and C) vs everything else
    groups: Dict[tuple, List[tuple]] = {}  # (chain, resseq, icode) -> [(order, symbol, record)]
    group_order: List[tuple] = []
    name_to_symbol = _NAME_TO_SYMBOL
    for order, rec in enumerate(records):
        if rec.resname in WATER_NAMES:
            continue
        symbol = name_to_symbol.get(rec.resname)
        if symbol is None:
            atoms = rec.atoms
            if atoms[0] is None or atoms[1] is None or atoms[2] is None:
                continue  # ligand, ion, nucleotide, cap...: not an amino acid
            symbol = _CANDIDATE  # amino-acid-like; kept only if peptide-bonded to a neighbour (step 3)
        key = (rec.chain, rec.resseq, rec.icode)
        if key not in groups:
            groups[key] = []
            group_order.append(key)
        groups[key].append((order, symbol, rec))

    # 2. microheterogeneity: one residue name per position, highest CA occupancy first, then file order
    chosen = []  # (chain rank, first order, symbol, record)
    for key in group_order:
        members = groups[key]
        best = members[0]
        if len(members) > 1:
            best_occ = -math.inf if best[2].atoms[1] is None else best[2].atoms[1][0]
            for m in members[1:]:
                occ = -math.inf if m[2].atoms[1] is None else m[2].atoms[1][0]
                if occ > best_occ:
                    best, best_occ = m, occ
        chosen.append((chain_rank.get(key[0], len(chain_rank)), members[0][0], best[1], best[2]))
    chosen.sort(key=lambda item: (item[0], item[1]))

    # 3. residues with an unknown name but N, CA, C (non-standard amino acids and amino-acid-like ligands
    #    such as SAH) are kept as 'X' only when peptide-bonded to the previous or next residue of the chain
    if any(c[2] is _CANDIDATE for c in chosen):
        resolved = []
        for k, c in enumerate(chosen):
            if c[2] is _CANDIDATE:
                rec = c[3]
                prev = chosen[k - 1][3] if k > 0 and chosen[k - 1][3].chain == rec.chain else None
                nxt = chosen[k + 1][3] if k + 1 < len(chosen) and chosen[k + 1][3].chain == rec.chain else None
                linked = (prev is not None and _bonded(prev.atoms[2], rec.atoms[0])) or (
                    nxt is not None and _bonded(rec.atoms[2], nxt.atoms[0]))
                if not linked:
                    continue
                c = (c[0], c[1], UNKNOWN_SYMBOL, rec)
            resolved.append(c)
        chosen = resolved

    kept = [c for c in chosen if c[3].atoms[1] is not None]
    protein_chains = list(dict.fromkeys(c[3].chain for c in kept))  # in chain order (kept is sorted)

    # 4. chain selection (author chain IDs)
    if chains is not None:
        wanted = [chains] if isinstance(chains, str) else list(chains)
        missing = [c for c in wanted if c not in protein_chains]
        if missing:
            present = list(chain_order)
            raise ChainNotFoundError(
                path,
                f"chain(s) {', '.join(repr(c) for c in missing)} not found or without protein residues; "
                f"chains with protein residues: {', '.join(repr(c) for c in protein_chains) or 'none'} "
                f"(all chains in the first model: {', '.join(repr(c) for c in present)})",
            )
        wanted_set = set(wanted)
        chosen = [c for c in chosen if c[3].chain in wanted_set]
        kept = [c for c in kept if c[3].chain in wanted_set]
        protein_chains = [c for c in protein_chains if c in wanted_set]

    num_skipped = len(chosen) - len(kept)
    if not kept:
        detail = f" ({num_skipped} amino-acid residue(s) lack a C-alpha atom)" if num_skipped else ""
        raise StructureParseError(path, "no protein residues with a C-alpha atom found in the first model" + detail)

    # 5. arrays
    L = len(kept)
    chain_index = {c: i for i, c in enumerate(protein_chains)}
    flat = []
    sequence = []
    chain_id = np.empty(L, dtype=np.int64)
    resnum = np.empty(L, dtype=np.int64)
    icodes = []
    bfac = np.empty(L, dtype=np.float32) if use_bfactor_as_plddt else None
    nan4 = (_NAN, _NAN, _NAN)
    for i, (_, _, symbol, rec) in enumerate(kept):
        sequence.append(symbol)
        chain_id[i] = chain_index[rec.chain]
        resnum[i] = rec.resseq
        icodes.append(rec.icode)
        for atom in rec.atoms:
            flat.extend(nan4 if atom is None else atom[1:4])
        if bfac is not None:
            bfac[i] = rec.atoms[1][4]
    backbone = np.asarray(flat, dtype=np.float32).reshape(L, 4, 3)
    return {
        "name": name,
        "sequence": "".join(sequence),
        "backbone": backbone,
        "pos": np.ascontiguousarray(backbone[:, 1]),
        "chain_id": chain_id,
        "chain_names": list(protein_chains),
        "residue_number": resnum,
        "insertion_code": "".join(icodes),
        "plddt": bfac,
        "num_skipped_residues": num_skipped,
    }
