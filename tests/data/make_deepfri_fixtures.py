"""Builds small DeepFRI-layout EC and GO folders from real PDB chains: tests/data/fixtures/deepfri/.

    python tests/data/make_deepfri_fixtures.py            # (re)writes the fixture folders
    python tests/data/make_deepfri_fixtures.py --check    # compares a fresh build with the committed files

Each structure file is one chain of a real PDB-format file in tests/data/structures (see SOURCES.md there):
the file's own ATOM/HETATM lines of that chain in the first model, unchanged, followed by END. The layout
and file formats follow DeepFRI's release as TorchDrug distributes it (Zenodo 6622158):

    EnzymeCommission/nrPDB-EC_annot.tsv   ### EC-numbers / task list / ### PDB-chain<TAB>EC-numbers / rows
    EnzymeCommission/nrPDB-EC_test.csv    PDB-chain,<30%,<40%,<50%,<70%,<95%
    EnzymeCommission/{train,valid,test}.zip   holding <split>/<PDB>-<chain>_<n>.pdb
    GeneOntology/...                      the same with the 12-row GO header and 4-column rows

The annotations are for testing only (terms chosen by hand, not DeepFRI's). One train file
(1HVR-B) is deliberately cut in the middle of an ATOM line, so it is unreadable.
"""
from __future__ import annotations

import argparse
import gzip
import io
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
STRUCTURES = HERE / "structures"
OUT = HERE / "fixtures" / "deepfri"

# key -> (source file, chain)
CHAINS = {
    "1A8O-A": ("1A8O.pdb", "A"),
    "1BD2-A": ("1BD2.pdb.gz", "A"),
    "1BD2-B": ("1BD2.pdb.gz", "B"),
    "1BD2-C": ("1BD2.pdb.gz", "C"),
    "1BD2-D": ("1BD2.pdb.gz", "D"),
    "1BD2-E": ("1BD2.pdb.gz", "E"),
    "1EJG-A": ("pdb1ejg.pdb.gz", "A"),
    "1H8D-H": ("1H8D_H.pdb.gz", "H"),
    "1HVR-A": ("1hvr.pdb.gz", "A"),
    "1HVR-B": ("1hvr.pdb.gz", "B"),
    "1TRM-A": ("1TRM_A.pdb.gz", "A"),
    "2N0N-A": ("2n0n_M1.pdb", "A"),
    "3D5T-C": ("3d5t_C.pdb.gz", "C"),
    "3MHT-A": ("pdb3mht.pdb.gz", "A"),
}
TRUNCATED = {"1HVR-B"}

EC_TASKS = ["3.4.21.4", "3.4.21.5", "3.4.23.16", "2.1.1.37", "1.1.1.37", "1.1.1.27", "3.2.1.17", "2.7.11.1"]
EC_SPLITS = {
    "train": ["1TRM-A_2201.pdb", "1BD2-D_311.pdb", "1BD2-A_12.pdb", "3MHT-A_907.pdb", "1HVR-A_45.pdb",
              "1HVR-B_46.pdb", "1BD2-E_7.pdb", "1BD2-B_400.pdb"],
    "valid": ["1H8D-H_5.pdb", "1EJG-A_3003.pdb", "1A8O-A_1.pdb"],
    "test": ["3D5T-C_88.pdb", "2N0N-A_17.pdb", "1BD2-C_9.pdb"],
}
EC_ANNOT = [
    ("1TRM-A", "3.4.21.4"), ("1H8D-H", "3.4.21.5"), ("1HVR-A", "3.4.23.16"), ("1HVR-B", "3.4.23.16"),
    ("3MHT-A", "2.1.1.37"), ("3D5T-C", "1.1.1.37"), ("1BD2-A", "2.7.11.1,3.2.1.17"), ("1BD2-B", "2.7.11.1"),
    ("1BD2-C", "3.4.21.4"), ("1BD2-D", "1.1.1.27"), ("1BD2-E", "1.1.1.27,1.1.1.37,3.4.21.5"),
    ("1EJG-A", "3.2.1.17"), ("1A8O-A", "2.7.11.1"), ("2N0N-A", "3.4.21.5"), ("4ZHL-U", "3.4.21.4"),
]
EC_TEST = [("3D5T-C", "0,1,1,1,1"), ("2N0N-A", "0,0,0,0,0"), ("1BD2-C", "0,0,1,1,1")]

GO_MF = ["GO:0004252", "GO:0004190", "GO:0008168", "GO:0003677"]
GO_BP = ["GO:0006508", "GO:0032259", "GO:0006355"]
GO_CC = ["GO:0005576", "GO:0005634"]
GO_NAMES = {
    "GO:0004252": "serine-type endopeptidase activity", "GO:0004190": "aspartic-type endopeptidase activity",
    "GO:0008168": "methyltransferase activity", "GO:0003677": "DNA binding", "GO:0006508": "proteolysis",
    "GO:0032259": "methylation", "GO:0006355": "regulation of DNA-templated transcription",
    "GO:0005576": "extracellular region", "GO:0005634": "nucleus",
}
GO_SPLITS = {
    "train": ["1TRM-A_2.pdb", "1BD2-D_3.pdb", "1BD2-B_1.pdb", "1HVR-A_4.pdb"],
    "valid": ["1H8D-H_6.pdb", "1EJG-A_5.pdb"],
    "test": ["3D5T-C_7.pdb", "1A8O-A_9.pdb", "2N0N-A_8.pdb"],
}
# rows of (key, MF, BP, CC); None = the field is absent from the line (fewer columns)
GO_ANNOT = [
    ("1BD2-B", "GO:0008168,GO:0003677", "GO:0032259", None),
    ("1TRM-A", "GO:0004252", "GO:0006508", "GO:0005576"),
    ("1BD2-D", "", "", "GO:0005576"),
    ("1HVR-A", "GO:0004190", "GO:0006355,GO:0006508", "GO:0005634,GO:0005576"),
    ("1H8D-H", "GO:0004252", "GO:0006508", ""),
    ("1EJG-A", "", "", ""),
    ("3D5T-C", "", "GO:0006355", "GO:0005634"),
    ("1A8O-A", "GO:0003677", "", "GO:0005634"),
    ("2N0N-A", "GO:0004252", "GO:0006508", "GO:0005576"),
]
GO_TEST = [("3D5T-C", "1,1,1,1,1"), ("1A8O-A", "0,0,0,1,1"), ("2N0N-A", "0,0,0,0,0")]


def chain_pdb(key: str) -> bytes:
    source, chain = CHAINS[key]
    raw = (STRUCTURES / source).read_bytes()
    if source.endswith(".gz"):
        raw = gzip.decompress(raw)
    lines = []
    for line in raw.decode("latin-1").splitlines():
        if line.startswith("ENDMDL"):
            break
        if line[:6] in ("ATOM  ", "HETATM") and len(line) > 21 and line[21] == chain:
            lines.append(line)
    if not lines:
        raise SystemExit(f"{source}: no lines for chain {chain}")
    data = ("\n".join(lines) + "\nEND\n").encode("latin-1")
    if key in TRUNCATED:
        cut = data.find(b"\n", len(data) // 2) + 40  # in the middle of the next ATOM line
        data = data[:cut]
    return data


def write_zip(path: Path, split: str, files) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        info = zipfile.ZipInfo(f"{split}/", date_time=(1980, 1, 1, 0, 0, 0))
        zf.writestr(info, b"")
        for name in files:
            info = zipfile.ZipInfo(f"{split}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, chain_pdb(name.split("_")[0]))
    path.write_bytes(buf.getvalue())


def write_common(folder: Path, kind: str, splits, test_rows) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split, files in splits.items():
        write_zip(folder / f"{split}.zip", split, files)
        (folder / f"nrPDB-{kind}_{split}.txt").write_text("".join(f.split("_")[0] + "\n" for f in files))
    (folder / f"nrPDB-{kind}_test.csv").write_text(
        "PDB-chain,<30%,<40%,<50%,<70%,<95%\n" + "".join(f"{k},{v}\n" for k, v in test_rows))


def build(root: Path) -> None:
    ec = root / "EnzymeCommission"
    write_common(ec, "EC", EC_SPLITS, EC_TEST)
    (ec / "nrPDB-EC_annot.tsv").write_text(
        "### EC-numbers\n" + "\t".join(EC_TASKS) + "\n### PDB-chain\tEC-numbers\n"
        + "".join(f"{k}\t{v}\n" for k, v in EC_ANNOT))
    go = root / "GeneOntology"
    write_common(go, "GO", GO_SPLITS, GO_TEST)
    header = []
    for label, terms in (("molecular_function", GO_MF), ("biological_process", GO_BP),
                         ("cellular_component", GO_CC)):
        header += [f"### GO-terms ({label})", "\t".join(terms), f"### GO-names ({label})",
                   "\t".join(GO_NAMES[t] for t in terms)]
    header.append("### PDB-chain\tGO-terms (molecular_function)\tGO-terms (biological_process)\t"
                  "GO-terms (cellular_component)")
    rows = []
    for key, *fields in GO_ANNOT:
        rows.append("\t".join([key] + [f for f in fields if f is not None]))
    (go / "nrPDB-GO_annot.tsv").write_text("\n".join(header) + "\n" + "\n".join(rows) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    if not args.check:
        build(OUT)
        print(f"wrote {OUT}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp))
        bad = [str(p.relative_to(tmp)) for p in Path(tmp).rglob("*") if p.is_file()
               and (not (OUT / p.relative_to(tmp)).is_file()
                    or (OUT / p.relative_to(tmp)).read_bytes() != p.read_bytes())]
    if bad:
        print("differ:", bad, file=sys.stderr)
        return 1
    print("fixtures match")
    return 0


if __name__ == "__main__":
    sys.exit(main())
