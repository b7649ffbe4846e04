"""Independent readers of raw PDB lines and mmCIF dictionaries, used as expectations by the io tests.

Deliberately simple and separate from esmgear_fast.io: they only slice the fixed PDB columns of the
first model (or read Biopython's raw MMCIF2Dict tables) without any of the parser's selection rules.
"""
import gzip
import io
from pathlib import Path

import pytest

from esmgear_fast.testing import test_data_dir


def _text(path):
    path = Path(path)
    if path.name.endswith(".gz"):
        with gzip.open(path, "rt") as fh:
            return fh.read()
    return path.read_text()


def raw_atom_lines(path):
    """ATOM/HETATM records of the first model as dicts (no altloc or residue filtering)."""
    atoms = []
    for line in _text(path).splitlines():
        if line.startswith("ENDMDL"):
            break
        if line.startswith(("ATOM  ", "HETATM")):
            atoms.append({
                "record": line[:6].strip(),
                "name": line[12:16].strip(),
                "altloc": line[16],
                "resname": line[17:20].strip(),
                "chain": line[21],
                "resseq": int(line[22:26]),
                "icode": line[26],
                "xyz": (float(line[30:38]), float(line[38:46]), float(line[46:54])),
                "occupancy": float(line[54:60]),
                "bfactor": float(line[60:66]),
            })
    return atoms


def raw_models_ca(path):
    """{model number: [CA xyz, ...]} over all MODEL blocks of a PDB file."""
    models, current = {}, None
    for line in _text(path).splitlines():
        if line.startswith("MODEL "):
            current = int(line[10:14])
            models[current] = []
        elif line.startswith(("ATOM  ", "HETATM")) and line[12:16] == " CA ":
            models.setdefault(current, []).append((float(line[30:38]), float(line[38:46]), float(line[46:54])))
    return models


def seqres(path):
    """{chain: [residue names]} from the SEQRES records."""
    out = {}
    for line in _text(path).splitlines():
        if line.startswith("SEQRES"):
            out.setdefault(line[11], []).extend(line[19:].split())
    return out


def mmcif_dict(path):
    from Bio.PDB.MMCIF2Dict import MMCIF2Dict

    return MMCIF2Dict(io.StringIO(_text(path)))


@pytest.fixture
def structures():
    """Folder of the committed structure files."""
    return test_data_dir() / "structures"


@pytest.fixture
def raw():
    """The helper functions above, as a namespace."""
    class Raw:
        text = staticmethod(_text)
        atoms = staticmethod(raw_atom_lines)
        models_ca = staticmethod(raw_models_ca)
        seqres = staticmethod(seqres)
        cif = staticmethod(mmcif_dict)

    return Raw
