"""mmCIF parsing, checked against the PDB-format file of the same entry and the raw _atom_site table."""
import numpy as np
import pytest
import torch

from esmgear_fast.io import load_structure, residue_name_to_symbol


@pytest.mark.parametrize("pdb, cif", [("1A8O.pdb", "1A8O.cif"), ("1BD2.pdb.gz", "1BD2.cif.gz")])
def test_mmcif_equals_pdb_of_same_entry(structures, pdb, cif):
    a = load_structure(structures / pdb)
    b = load_structure(structures / cif)
    assert a.name == b.name
    assert a == b


def _atom_site_rows(d):
    keys = ["group_PDB", "label_atom_id", "label_alt_id", "auth_comp_id", "auth_asym_id", "auth_seq_id",
            "pdbx_PDB_ins_code", "Cartn_x", "Cartn_y", "Cartn_z", "occupancy", "pdbx_PDB_model_num"]
    alias = {"auth_comp_id": "label_comp_id", "auth_seq_id": "label_seq_id"}  # some files have only label_ forms
    cols = [d.get("_atom_site." + k) or d["_atom_site." + alias[k]] for k in keys]
    return [dict(zip(keys, values)) for values in zip(*cols)]


def test_mmcif_insertion_codes_against_atom_site(structures, raw):
    path = structures / "4ZHL.cif.gz"
    p = load_structure(path)
    rows = [r for r in _atom_site_rows(raw.cif(path)) if r["pdbx_PDB_model_num"] == "1"]
    keys = []
    for r in rows:
        if r["label_atom_id"] == "CA" and residue_name_to_symbol(r["auth_comp_id"]) is not None:
            key = (r["auth_asym_id"], int(r["auth_seq_id"]), " " if r["pdbx_PDB_ins_code"] in "?." else r["pdbx_PDB_ins_code"])
            if key not in keys:
                keys.append(key)
    ours = list(zip([p.chain_names[i] for i in p.chain_id.tolist()], p.residue_number.tolist(), p.insertion_code))
    assert ours == keys
    assert sum(k[2] != " " for k in keys) == 19


def test_mmcif_multi_model_first_model_only(structures, raw):
    path = structures / "multimodel_warning.cif.gz"
    p = load_structure(path)
    rows = _atom_site_rows(raw.cif(path))
    assert {r["pdbx_PDB_model_num"] for r in rows} == {"1", "2"}
    first = [r for r in rows if r["pdbx_PDB_model_num"] == "1" and r["label_atom_id"] == "CA"
             and r["label_alt_id"] in (".", "A") and residue_name_to_symbol(r["auth_comp_id"]) is not None]
    assert len(p) == len(first)
    expected = np.array([[float(r[k]) for k in ("Cartn_x", "Cartn_y", "Cartn_z")] for r in first], dtype=np.float32)
    assert np.array_equal(p.pos.numpy(), expected)
    # ligand VWW has atoms named N, CA and C but is not bonded to the chain: not a residue
    vww = {r["label_atom_id"] for r in rows if r["auth_comp_id"] == "VWW"}
    assert {"N", "CA", "C"} <= vww and "X" not in p.sequence


def test_mmcif_chain_selection(structures):
    full = load_structure(structures / "1BD2.cif.gz")
    c = load_structure(structures / "1BD2.cif.gz", chains=["C"])
    part = full.chain_slice("C")
    assert c.chain_names == ["C"] and c.sequence == part.sequence and len(c) == 9
    assert torch.equal(c.pos, part.pos) and torch.equal(c.residue_number, part.residue_number)


def test_modelcif_plddt(structures):
    cif = load_structure(structures / "synthetic" / "synthetic_modelcif_1A8O.cif")
    pdb = load_structure(structures / "synthetic" / "synthetic_af_style_1A8O.pdb")
    assert cif.plddt is not None
    assert cif.plddt.tolist() == pytest.approx([(i * 37) % 70 + 25.5 for i in range(len(cif))])
    assert torch.equal(cif.plddt, pdb.plddt) and torch.equal(cif.pos, pdb.pos) and cif.sequence == pdb.sequence
    assert load_structure(structures / "1A8O.cif").plddt is None
