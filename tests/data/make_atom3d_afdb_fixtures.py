"""Builds the Atom3D (PSR, MSP) and AlphaFold DB test fixtures from real structures.

    python tests/data/make_atom3d_afdb_fixtures.py [--afdb-model PATH_TO_AF-A0A3B4WVX2-F1-model_v6.cif]

Atom3D (``fixtures/atom3d/``): small LMDB folders in Atom3D's exact entry format, written with
:func:`esmgear_fast.data.datasets.atom3d.write_atom3d_lmdb`. Atom tables are built from the real files in
``tests/data/structures`` the way Atom3D's ``bp_to_df`` builds them from Biopython structures (every atom of
one model, Atom3D's 20 columns, coordinates rounded to 6 decimals as ``to_json(double_precision=6)`` does).

* PSR ``split-by-year``: train = 3 "decoys" of target T0001 (NMR models 1-3 of neopetrosiamide, with
  hydrogens), val = T0002 (1A8O: MSE residues, waters), test = T0003 (1hvr: two chains, ligand XK2).
  GDT_TS labels are made-up numbers (listed in ``PSR_LABELS``).
* MSP ``split-by-sequence-identity-30``: wild type = the real structure, mutant = the same with one residue
  renamed to the mutant type and its side chain cut back to CB (GLY: to CA), as an in-silico point
  mutation: train = 1hvr D25N on chain A (label "1") and 1A8O L189A (label "0"), val = 2n0n_M1 F6A,
  test = 1TRM_A H57A (see ``MSP_ENTRIES``).

AlphaFold DB (``fixtures/afdb/``): two proteome-style tar shards of gzipped members with AF-style names. The
only real AlphaFold model is ``AF-A0A3B4WVX2-F1-model_v6.cif`` from the ``mdeepfri`` 1.3.0 wheel on PyPI
(pass its path with ``--afdb-model``; get it with ``pip download --no-deps mdeepfri==1.3.0`` and unzip
``mDeepFRI/tests/data/AF-A0A3B4WVX2-F1-model_v6.cif``); the other members are real PDB chains renamed
``AF-PDB<ID>-F1-model_v4.*`` plus one deliberately truncated member. See ``fixtures/afdb/SOURCES.md``.
Everything is deterministic (tar and gzip mtimes 0, sorted order), so a rebuild gives identical files.
"""
from __future__ import annotations

import argparse
import gzip
import io
import shutil
import sys
import tarfile
from pathlib import Path

from Bio.PDB import PDBParser

HERE = Path(__file__).resolve().parent
STRUCTURES = HERE / "structures"
ATOM3D = HERE / "fixtures" / "atom3d"
AFDB = HERE / "fixtures" / "afdb"
sys.path.insert(0, str(HERE.parent.parent))

from esmgear_fast.data.datasets.atom3d import write_atom3d_lmdb  # noqa: E402

COLUMNS = ["ensemble", "subunit", "structure", "model", "chain", "hetero", "insertion_code", "residue", "segid",
           "resname", "altloc", "occupancy", "bfactor", "x", "y", "z", "element", "name", "fullname",
           "serial_number"]

# (split, file, model index, target, decoy, gdt_ts)
PSR_LABELS = [
    ("train", "nmr_neopetrosiamide.pdb.gz", 0, "T0001", "model_1", 0.8125),
    ("train", "nmr_neopetrosiamide.pdb.gz", 1, "T0001", "model_2", 0.5),
    ("train", "nmr_neopetrosiamide.pdb.gz", 2, "T0001", "model_3", 0.25),
    ("val", "1A8O.pdb", 0, "T0002", "1A8O", 0.9),
    ("test", "1hvr.pdb.gz", 0, "T0003", "1hvr", 0.375),
]
# (split, file, original name, chain, residue number, mutant 3-letter, mutant 1-letter, label)
MSP_ENTRIES = [
    ("train", "1hvr.pdb.gz", "1HVR_A_B", "A", 25, "ASN", "N", "1"),
    ("train", "1A8O.pdb", "1A8O_A_A", "A", 189, "ALA", "A", "0"),
    ("val", "2n0n_M1.pdb", "2N0N_A_A", "A", 6, "ALA", "A", "0"),
    ("test", "1TRM_A.pdb.gz", "1TRM_A_A", "A", 57, "ALA", "A", "1"),
]
ONE = {"ALA": "A", "ARG": "R", "ASN": "N", "ASP": "D", "CYS": "C", "GLN": "Q", "GLU": "E", "GLY": "G",
       "HIS": "H", "ILE": "I", "LEU": "L", "LYS": "K", "MET": "M", "PHE": "F", "PRO": "P", "SER": "S",
       "THR": "T", "TRP": "W", "TYR": "Y", "VAL": "V"}


def _open(path: Path):
    return gzip.open(path, "rt") if path.suffix == ".gz" else open(path)


def read_models(name: str):
    with _open(STRUCTURES / name) as handle:
        return list(PDBParser(QUIET=True).get_structure(name, handle))


def atom_rows(model, ensemble: str, structure: str):
    """Atom3D bp_to_df rows of one Biopython model (atoms in Biopython's chain/residue/atom order)."""
    rows = []
    for chain in model:
        for residue in chain:
            for atom in residue:
                hetero, number, icode = residue.id
                rows.append([ensemble, 0, structure, model.serial_num, chain.id, hetero, icode, number,
                             residue.segid, residue.resname, atom.altloc, float(atom.occupancy),
                             float(atom.bfactor), round(float(atom.coord[0]), 6), round(float(atom.coord[1]), 6),
                             round(float(atom.coord[2]), 6), atom.element, atom.name, atom.fullname,
                             atom.serial_number])
    return rows


def table(rows):
    return {"columns": list(COLUMNS), "index": list(range(len(rows))), "data": rows}


def mutate(rows, chain: str, number: int, new_name: str):
    col = {c: i for i, c in enumerate(COLUMNS)}
    keep = {"N", "CA", "C", "O"} if new_name == "GLY" else {"N", "CA", "C", "O", "CB"}
    out, found = [], None
    for row in rows:
        if row[col["chain"]] == chain and row[col["residue"]] == number and row[col["hetero"]] == " ":
            found = row[col["resname"]]
            if row[col["name"]] not in keep:
                continue
            row = list(row)
            row[col["resname"]] = new_name
        out.append(row)
    if found is None:
        raise SystemExit(f"residue {chain}{number} not found")
    return out, found


def build_atom3d() -> None:
    for sub in ("PSR", "MSP"):  # keep SOURCES.md
        if (ATOM3D / sub).exists():
            shutil.rmtree(ATOM3D / sub)
    for split in ("train", "val", "test"):
        entries = []
        for s, name, model_index, target, decoy, gdt_ts in PSR_LABELS:
            if s != split:
                continue
            model = read_models(name)[model_index]
            rows = atom_rows(model, target, f"{decoy}.pdb")
            entries.append({"atoms": table(rows), "id": str((target, decoy)),
                            "file_path": f"/casp/{target}/{decoy}.pdb",
                            "scores": {"rmsd": 1.0, "gdt_ts": gdt_ts, "gdt_ha": gdt_ts / 2, "tm": gdt_ts}})
        write_atom3d_lmdb(entries, ATOM3D / "PSR" / "split-by-year" / "data" / split)
    for split in ("train", "val", "test"):
        entries = []
        for s, name, oname, chain, number, new3, new1, label in MSP_ENTRIES:
            if s != split:
                continue
            model = read_models(name)[0]
            original = atom_rows(model, oname, f"{oname}.pdb")
            mutated, old3 = mutate(atom_rows(model, oname, f"{oname}.pdb"), chain, number, new3)
            mutation = f"{ONE[old3]}{chain}{number}{new1}"
            col = COLUMNS.index("ensemble")
            for row in mutated:
                row[col] = f"{oname}_{mutation}"
            entries.append({"original_atoms": table(original), "mutated_atoms": table(mutated),
                            "id": f"{oname}_{mutation}", "label": label,
                            "file_path": f"/msp/mutated/{oname}_{mutation}.pdb"})
        write_atom3d_lmdb(entries, ATOM3D / "MSP" / "split-by-sequence-identity-30" / "data" / split)


def _gz(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0) as handle:
        handle.write(data)
    return buf.getvalue()


def _read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def _write_tar(path: Path, members) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))


def build_afdb(model_cif: Path) -> None:
    AFDB.mkdir(parents=True, exist_ok=True)
    for old in AFDB.glob("*.tar"):
        old.unlink()
    af_cif = _read_bytes(model_cif)
    if b"_ma_qa_metric" not in af_cif:
        raise SystemExit(f"{model_cif} is not an AlphaFold ModelCIF file")
    pdb_1a8o = _read_bytes(STRUCTURES / "1A8O.pdb")
    cif_1a8o = _read_bytes(STRUCTURES / "1A8O.cif")
    ecoli = [
        ("AF-A0A3B4WVX2-F1-model_v6.cif.gz", _gz(af_cif)),
        ("AF-PDB1A8O-F1-model_v4.cif.gz", _gz(cif_1a8o)),
        ("AF-PDB1A8O-F1-model_v4.pdb.gz", _gz(pdb_1a8o)),
        ("AF-PDB2N0N-F1-model_v4.pdb.gz", _gz(_read_bytes(STRUCTURES / "2n0n_M1.pdb"))),
        ("AF-PDBBROKEN-F1-model_v4.pdb.gz", _gz(pdb_1a8o)[:200]),  # truncated gzip stream: a corrupt member
    ]
    _write_tar(AFDB / "UP000000625_83333_ECOLI_v4.tar", ecoli)
    yeast = [
        ("AF-PDB1TRM-F1-model_v4.pdb.gz", _gz(_read_bytes(STRUCTURES / "1TRM_A.pdb.gz"))),
        ("AF-PDB3D5T-F1-model_v4.pdb.gz", _gz(_read_bytes(STRUCTURES / "3d5t_C.pdb.gz"))),
    ]
    _write_tar(AFDB / "UP000002311_559292_YEAST_v4.tar", yeast)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--afdb-model", type=Path, default=None,
                        help="AF-A0A3B4WVX2-F1-model_v6.cif from the mdeepfri 1.3.0 wheel (AFDB fixture)")
    parser.add_argument("--skip-atom3d", action="store_true")
    args = parser.parse_args()
    if not args.skip_atom3d:
        build_atom3d()
        print(f"wrote {ATOM3D}")
    if args.afdb_model is not None:
        build_afdb(args.afdb_model)
        print(f"wrote {AFDB}")


if __name__ == "__main__":
    main()
