"""Every malformed input raises StructureParseError (a ValueError) whose message names the file."""
import gzip
import random

import pytest

from esmgear_fast.io import StructureParseError, load_structure


def _cut_inside_atom_line(text: str) -> str:
    lines = text.splitlines(keepends=True)
    atom_rows = [i for i, ln in enumerate(lines) if ln.startswith("ATOM  ")]
    k = atom_rows[len(atom_rows) // 2]
    return "".join(lines[:k]) + lines[k][:41]  # ends in the middle of the y coordinate


def _make(tmp_path, structures):
    pdb_text = (structures / "1A8O.pdb").read_text()
    cif_text = (structures / "1A8O.cif").read_text()
    with gzip.open(structures / "1hvr.pdb.gz", "rt") as fh:
        hvr = fh.read()
    files = {}

    def put(name, data, problem):
        path = tmp_path / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        files[name] = (path, problem)

    put("empty.pdb", b"", "empty")
    put("blank.cif", "\n   \n\n", "empty")
    put("truncated.pdb", _cut_inside_atom_line(pdb_text), "truncated")
    put("truncated.cif", cif_text[: len(cif_text) * 2 // 3], "mmCIF")
    gz = gzip.compress(pdb_text.encode())
    put("truncated.pdb.gz", gz[: len(gz) // 2], "truncated")
    put("garbage.pdb", random.Random(0).randbytes(4096), "binary")
    put("garbage.cif.gz", gzip.compress(random.Random(1).randbytes(4096)), "binary")
    put("garbage_text.cif", "".join(random.Random(2).choices("abc xyz_;'\"\n#", k=3000)), "")
    put("waters_and_ligands.pdb",
        "".join(ln + "\n" for ln in hvr.splitlines() if ln.startswith("HETATM") and ln[17:20] in ("XK2", "HOH")),
        "no protein residues")
    lines = pdb_text.splitlines(keepends=True)
    k = next(i for i, ln in enumerate(lines) if ln.startswith("ATOM  ") and ln[12:16] == " CA ")
    lines[k] = lines[k][:30] + "  abc.de" + lines[k][38:]
    put("bad_coordinates.pdb", "".join(lines), f"line {k + 1}")
    lines = pdb_text.splitlines(keepends=True)
    k = next(i for i, ln in enumerate(lines) if ln.startswith("ATOM  ") and ln[12:16] == " N  ")
    lines[k] = lines[k][:22] + "  x1" + lines[k][26:]
    put("bad_residue_number.pdb", "".join(lines), f"line {k + 1}")
    no_atom_site = []
    skipping = False
    for ln in cif_text.splitlines(keepends=True):
        if ln.startswith("loop_"):
            skipping = False
        if ln.startswith("_atom_site."):
            skipping = True
            if no_atom_site and no_atom_site[-1].startswith("loop_"):
                no_atom_site.pop()
        if not skipping:
            no_atom_site.append(ln)
    put("no_atom_site.cif", "".join(no_atom_site), "_atom_site")
    put("not_gzip.pdb.gz", pdb_text, "not gzip")
    put("header_only.pdb", "HEADER    TEST\nREMARK nothing here\nEND\n", "no ATOM/HETATM")
    put("unknown.xyz", "3\nwater\nO 0 0 0\n", "unsupported")
    put("unknown_content.dat", "hello world\nthis is not a structure\n", "cannot tell")
    return files


@pytest.fixture
def malformed(tmp_path, structures):
    return _make(tmp_path, structures)


CASES = ["empty.pdb", "blank.cif", "truncated.pdb", "truncated.cif", "truncated.pdb.gz", "garbage.pdb",
         "garbage.cif.gz", "garbage_text.cif", "waters_and_ligands.pdb", "bad_coordinates.pdb",
         "bad_residue_number.pdb", "no_atom_site.cif", "not_gzip.pdb.gz", "header_only.pdb", "unknown.xyz",
         "unknown_content.dat"]


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("parser", ["auto", "biopython"])
def test_malformed_file_raises_structure_parse_error(malformed, name, parser):
    path, problem = malformed[name]
    with pytest.raises(StructureParseError) as info:
        load_structure(path, parser=parser)
    err = info.value
    assert isinstance(err, ValueError)
    assert str(err).startswith(str(path))
    assert err.path == str(path)
    # the fast reader's messages are checked in full; Biopython's own wording differs for PDB syntax errors
    if parser == "auto":
        assert problem.lower() in str(err).lower()


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(StructureParseError, match="not found"):
        load_structure(tmp_path / "nope.pdb")
    (tmp_path / "dir.pdb").mkdir()
    with pytest.raises(StructureParseError, match="directory"):
        load_structure(tmp_path / "dir.pdb")


def test_non_finite_backbone_coordinates(tmp_path, structures):
    lines = (structures / "1A8O.pdb").read_text().splitlines(keepends=True)
    k = next(i for i, ln in enumerate(lines) if ln.startswith("ATOM  ") and ln[12:16] == " CA ")
    lines[k] = lines[k][:30] + "     nan" + lines[k][38:]
    path = tmp_path / "nan.pdb"
    path.write_text("".join(lines))
    with pytest.raises(StructureParseError, match=f"line {k + 1}"):
        load_structure(path)
    with pytest.raises(StructureParseError, match="non-finite"):
        load_structure(path, parser="biopython")


def test_errors_survive_pickling(malformed):
    import pickle

    path, _ = malformed["empty.pdb"]
    with pytest.raises(StructureParseError) as info:
        load_structure(path)
    again = pickle.loads(pickle.dumps(info.value))
    assert str(again) == str(info.value) and again.problem == info.value.problem


def test_bad_arguments(structures):
    with pytest.raises(ValueError, match="parser"):
        load_structure(structures / "1A8O.pdb", parser="nope")
    with pytest.raises(ValueError, match="PDB files only"):
        load_structure(structures / "1A8O.cif", parser="fast")
    with pytest.raises(ValueError):
        load_structure(structures / "1A8O.pdb", chains=[])
