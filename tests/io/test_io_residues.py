import pytest
import torch

from esmgear_fast.io import residues as R

# TorchDrug's torchdrug/data/protein.py, Protein.residue2id and id2residue_symbol (GearNet checkpoints
# one-hot encode residue types in this order).
TORCHDRUG_RESIDUE2ID = {"GLY": 0, "ALA": 1, "SER": 2, "PRO": 3, "VAL": 4, "THR": 5, "CYS": 6, "ILE": 7, "LEU": 8,
                        "ASN": 9, "ASP": 10, "GLN": 11, "LYS": 12, "GLU": 13, "MET": 14, "HIS": 15, "PHE": 16,
                        "ARG": 17, "TYR": 18, "TRP": 19}
TORCHDRUG_ID2SYMBOL = {0: "G", 1: "A", 2: "S", 3: "P", 4: "V", 5: "T", 6: "C", 7: "I", 8: "L", 9: "N",
                       10: "D", 11: "Q", 12: "K", 13: "E", 14: "M", 15: "H", 16: "F", 17: "R", 18: "Y", 19: "W"}


def test_vocabulary_is_torchdrug_order():
    assert {name: i for i, name in enumerate(R.RESIDUE_NAMES)} == TORCHDRUG_RESIDUE2ID
    assert {i: s for i, s in enumerate(R.RESIDUE_SYMBOLS)} == TORCHDRUG_ID2SYMBOL
    assert R.UNKNOWN_RESIDUE == 20 and R.NUM_RESIDUE_TYPES == 21 and R.INDEX_TO_SYMBOL[20] == "X"


def test_sequence_to_residue_type():
    seq = "GASPVTCILNDQKEMHFRYWX"
    assert torch.equal(R.sequence_to_residue_type(seq), torch.arange(21))
    assert R.sequence_to_residue_type(seq).dtype == torch.long
    assert R.residue_type_to_sequence(torch.arange(21)) == seq
    with pytest.raises(ValueError):
        R.residue_type_to_sequence([21])


@pytest.mark.parametrize("name, letter", [
    ("MSE", "M"), ("SEC", "C"), ("HYP", "P"), ("SEP", "S"), ("TPO", "T"), ("PTR", "Y"), ("MLY", "K"),
    ("CSO", "C"), ("SME", "M"), ("AIB", "A"), ("HSD", "H"), ("HIE", "H"), ("CYX", "C"), ("DAL", "A"),
    ("UNK", "X"), ("ALA", "A"), ("TRP", "W"),
])
def test_known_names(name, letter):
    assert R.residue_name_to_symbol(name) == letter


@pytest.mark.parametrize("name", ["HOH", "SAH", "XK2", "DA", "U", "NH2", "ACE", "CA", "ZN"])
def test_non_amino_acid_names(name):
    assert R.residue_name_to_symbol(name) is None


def test_modified_table_parents_are_standard():
    assert set(R.MODIFIED_RESIDUES.values()) <= set(R.RESIDUE_NAMES)
    assert not set(R.MODIFIED_RESIDUES) & set(R.RESIDUE_NAMES)
    assert not set(R.MODIFIED_RESIDUES) & R.WATER_NAMES


def test_normalize_sequence():
    assert R.normalize_sequence("acdBZUOJX") == "ACDXXXXXX"
    for bad in ("AC-D", "AC D", "AC*", "A1"):
        with pytest.raises(ValueError):
            R.normalize_sequence(bad)
