"""PDB parsing checked against the raw ATOM/SEQRES lines of the real fixture files."""
import math
import shutil

import numpy as np
import pytest
import torch

from esmgear_fast.io import ChainNotFoundError, load_structure, residue_name_to_symbol

THREE = {"GLY": "G", "ALA": "A", "SER": "S", "PRO": "P", "VAL": "V", "THR": "T", "CYS": "C", "ILE": "I",
         "LEU": "L", "ASN": "N", "ASP": "D", "GLN": "Q", "LYS": "K", "GLU": "E", "MET": "M", "HIS": "H",
         "PHE": "F", "ARG": "R", "TYR": "Y", "TRP": "W"}


def _ca_lines(atoms, chain=None):
    return [a for a in atoms if a["name"] == "CA" and a["resname"] != "HOH" and (chain is None or a["chain"] == chain)]


def test_1a8o_plain_pdb_against_raw_lines(structures, raw):
    path = structures / "1A8O.pdb"
    p = load_structure(path)
    atoms = raw.atoms(path)
    ca = _ca_lines(atoms)
    # SEQRES (with selenomethionine MSE written as M) is the full observed sequence of this entry
    expected = "".join("M" if n == "MSE" else THREE[n] for n in raw.seqres(path)["A"])
    assert p.sequence == expected and len(p) == 70
    assert p.name == "1A8O" and p.chain_names == ["A"] and p.num_skipped_residues == 0 and p.plddt is None
    assert sum(a["resname"] == "MSE" for a in ca) == 4  # MSE are HETATM records inside the chain
    assert {a["record"] for a in ca if a["resname"] == "MSE"} == {"HETATM"}
    assert np.array_equal(p.pos.numpy(), np.array([a["xyz"] for a in ca], dtype=np.float32))
    assert p.residue_number.tolist() == [a["resseq"] for a in ca]
    for slot, name in ((0, "N"), (2, "C"), (3, "O")):
        lines = [a for a in atoms if a["name"] == name and a["resname"] != "HOH"]
        assert np.array_equal(p.backbone[:, slot].numpy(), np.array([a["xyz"] for a in lines], dtype=np.float32))
    # waters are in the file but not in the protein
    assert any(a["resname"] == "HOH" for a in atoms)
    assert p.residue_type.tolist() == [("GASPVTCILNDQKEMHFRYW".index(c)) for c in p.sequence]


def test_multi_chain_ligand_water_and_cso(structures, raw):
    path = structures / "1hvr.pdb.gz"
    p = load_structure(path)
    atoms = raw.atoms(path)
    assert p.chain_names == ["A", "B"]
    for index, chain in enumerate("AB"):
        expected = "".join(residue_name_to_symbol(n) for n in raw.seqres(path)[chain])
        assert "C" in expected  # CSO (S-hydroxycysteine) mapped to its parent CYS
        part = p.chain_slice(chain)
        assert part.sequence == expected
        ca = _ca_lines([a for a in atoms if a["resname"] not in ("XK2",)], chain)
        assert np.array_equal(part.pos.numpy(), np.array([a["xyz"] for a in ca], dtype=np.float32))
        assert (p.chain_id == index).sum().item() == len(ca)
    assert any(a["resname"] == "XK2" for a in atoms)
    assert len(p) == 198


def test_chain_selection(structures, raw):
    path = structures / "1BD2.pdb.gz"
    full = load_structure(path)
    atoms = raw.atoms(path)
    counts = {c: len({(a["resseq"], a["icode"]) for a in _ca_lines(atoms, c)}) for c in "ABCDE"}
    assert full.chain_names == list("ABCDE")
    assert [(full.chain_id == i).sum().item() for i in range(5)] == [counts[c] for c in "ABCDE"]
    d = load_structure(path, chains="D")
    assert d.chain_names == ["D"] and len(d) == counts["D"]
    assert torch.equal(d.chain_id, torch.zeros(len(d), dtype=torch.long))
    two = load_structure(path, chains=["E", "A"])  # file order is kept
    assert two.chain_names == ["A", "E"] and len(two) == counts["A"] + counts["E"]
    assert torch.equal(two.pos, torch.cat([full.chain_slice("A").pos, full.chain_slice("E").pos]))
    with pytest.raises(ChainNotFoundError) as info:
        load_structure(path, chains=["A", "Z"])
    message = str(info.value)
    assert "1BD2.pdb.gz" in message and "'Z'" in message
    assert all(f"'{c}'" in message for c in "ABCDE")
    assert isinstance(info.value, ValueError)


def test_multi_model_reads_first_model_only(structures, raw):
    path = structures / "nmr_neopetrosiamide.pdb.gz"
    models = raw.models_ca(path)
    assert len(models) == 24
    p = load_structure(path)
    assert np.array_equal(p.pos.numpy(), np.array(models[1], dtype=np.float32))
    assert not np.array_equal(p.pos.numpy(), np.array(models[2], dtype=np.float32))
    # SME (methionine sulfoxide) maps to M
    expected = "".join(residue_name_to_symbol(n) for n in raw.seqres(path)["A"])
    assert p.sequence == expected and "M" in expected


def test_insertion_codes_and_residues_without_ca(structures, raw):
    path = structures / "1H8D_H.pdb.gz"
    p = load_structure(path)
    atoms = raw.atoms(path)
    residues = {}
    for a in atoms:
        residues.setdefault((a["resseq"], a["icode"]), set()).add(a["name"])
    with_ca = [k for k, names in residues.items() if "CA" in names]
    without_ca = [k for k, names in residues.items() if "CA" not in names]
    assert list(zip(p.residue_number.tolist(), p.insertion_code)) == with_ca
    assert sum(c != " " for c in p.insertion_code) == sum(k[1] != " " for k in with_ca) == 23
    assert p.num_skipped_residues == len(without_ca) == 9
    # residues sharing a number but differing in insertion code are separate residues
    numbers = p.residue_number.tolist()
    assert len(numbers) > len(set(numbers))


def test_altloc_highest_occupancy_wins(structures, raw):
    path = structures / "1TRM_A.pdb.gz"
    p = load_structure(path)
    atoms = [a for a in raw.atoms(path) if a["resseq"] == 57]
    i = p.residue_number.tolist().index(57)
    for slot, name in enumerate(("N", "CA", "C", "O")):
        candidates = [a for a in atoms if a["name"] == name]
        assert [a["altloc"] for a in candidates] == ["A", "B"]
        assert candidates[1]["occupancy"] > candidates[0]["occupancy"]
        assert p.backbone[i, slot].tolist() == pytest.approx(candidates[1]["xyz"], abs=1e-4)


def test_altloc_ties_and_point_mutations(structures, raw):
    path = structures / "pdb1ejg.pdb.gz"
    p = load_structure(path)
    assert p.sequence == "".join(THREE[n] for n in raw.seqres(path)["A"])
    atoms = raw.atoms(path)
    # residue 1: CA altlocs A and B both 0.50 -> the first (A) is taken
    ca1 = [a for a in atoms if a["resseq"] == 1 and a["name"] == "CA"]
    assert [a["occupancy"] for a in ca1] == [0.5, 0.5]
    assert p.pos[0].tolist() == pytest.approx(ca1[0]["xyz"], abs=1e-4)
    # residue 22 is PRO (altloc A) or SER (B, C), all at 0.33: the first, PRO, is taken
    i22 = p.residue_number.tolist().index(22)
    pro_ca = next(a for a in atoms if a["resseq"] == 22 and a["name"] == "CA" and a["resname"] == "PRO")
    assert p.sequence[i22] == "P"
    assert p.pos[i22].tolist() == pytest.approx(pro_ca["xyz"], abs=1e-4)
    # residue 25 is LEU (CA without altloc) or ILE (no CA): LEU
    assert p.sequence[p.residue_number.tolist().index(25)] == "L"
    assert load_structure(path) == p  # deterministic


def test_missing_backbone_atom_is_nan(structures, raw):
    path = structures / "3d5t_C.pdb.gz"
    p = load_structure(path)
    atoms = raw.atoms(path)
    present = {}
    for a in atoms:
        present.setdefault((a["resseq"], a["icode"]), set()).add(a["name"])
    expected_missing = [(k, n) for k, names in present.items() if "CA" in names for n in ("N", "C", "O")
                        if n not in names]
    assert expected_missing == [((102, " "), "N")]
    i = p.residue_number.tolist().index(102)
    assert p.backbone[i, 0].isnan().all()
    assert torch.isfinite(p.backbone[i, 1:]).all()
    assert p.backbone.isnan().any(-1).sum().item() == 1


def test_amino_acid_like_ligand_not_bonded_is_skipped(structures, raw):
    path = structures / "pdb3mht.pdb.gz"
    atoms = raw.atoms(path)
    sah = {a["name"] for a in atoms if a["resname"] == "SAH"}
    assert {"N", "CA", "C"} <= sah  # looks like an amino acid by atom names
    p = load_structure(path)
    expected = "".join(THREE[a["resname"]] for a in _ca_lines(atoms) if a["resname"] in THREE)
    assert p.sequence == expected and "X" not in p.sequence


def test_modified_and_unlisted_residues(structures, raw):
    path = structures / "2n0n_M1.pdb"
    p = load_structure(path)
    names = raw.seqres(path)["A"]
    assert names == ["HIS", "AIB", "GLU", "GLY", "LYS", "PHE", "THR", "SER", "GLU", "PHE", "PH8", "NH2"]
    # AIB -> A (table), PH8 -> X (not in the table, peptide-bonded), NH2 cap has no CA -> not a residue
    assert p.sequence == "HAEGKFTSEFX"
    assert p.residue_type[-1].item() == 20
    assert p.num_skipped_residues == 0
    assert list(zip(p.residue_number.tolist()[-3:], p.insertion_code[-3:])) == [(9, " "), (9, "A"), (11, " ")]


def test_ent_suffix_and_content_sniffing(structures, tmp_path):
    ref = load_structure(structures / "1A8O.pdb")
    for name in ("1A8O.ent", "1A8O.txt", "1A8O"):
        shutil.copy(structures / "1A8O.pdb", tmp_path / name)
        p = load_structure(tmp_path / name)
        assert p.sequence == ref.sequence and torch.equal(p.pos, ref.pos)
    shutil.copy(structures / "1A8O.cif", tmp_path / "cif_without_suffix")
    assert load_structure(tmp_path / "cif_without_suffix").sequence == ref.sequence


def test_plddt_from_alphafold_style_pdb(structures):
    path = structures / "synthetic" / "synthetic_af_style_1A8O.pdb"
    p = load_structure(path)
    expected = [(i * 37) % 70 + 25.5 for i in range(len(p))]
    assert p.plddt is not None and p.plddt.tolist() == pytest.approx(expected)
    assert load_structure(path, plddt=False).plddt is None
    ref = load_structure(structures / "1A8O.pdb")
    assert torch.equal(p.pos, ref.pos) and p.sequence == ref.sequence


def test_plddt_forced_reads_ca_bfactor(structures, raw):
    path = structures / "1A8O.pdb"
    p = load_structure(path, plddt=True)
    ca = _ca_lines(raw.atoms(path))
    assert p.plddt.tolist() == pytest.approx([a["bfactor"] for a in ca])
    assert load_structure(path).plddt is None  # an experimental structure is not a predicted model


def test_nan_backbone_only_where_atoms_missing(structures):
    for name in ("1A8O.pdb", "1hvr.pdb.gz", "1BD2.pdb.gz"):
        p = load_structure(structures / name)
        assert torch.isfinite(p.pos).all()
        assert math.isclose(p.backbone[:, [0, 2]].isnan().float().mean().item(), 0.0)
