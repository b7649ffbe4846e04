import math

import numpy as np
import pytest
import torch

from esmgear_fast.io import Protein


def _pos(L, seed=0):
    g = np.random.default_rng(seed)
    return np.cumsum(g.normal(size=(L, 3)) * 2.0, axis=0)


def test_from_arrays_defaults():
    pos = _pos(5)
    p = Protein.from_arrays("ACDEF", pos)
    assert len(p) == 5 and p.num_residues == 5
    assert p.name == "protein"
    assert p.pos.dtype == torch.float32 and p.pos.shape == (5, 3)
    assert torch.equal(p.pos, torch.from_numpy(pos).float())
    assert torch.equal(p.chain_id, torch.zeros(5, dtype=torch.long))
    assert p.chain_names == ["A"]
    assert torch.equal(p.residue_number, torch.arange(1, 6))
    assert p.insertion_code == " " * 5
    assert p.plddt is None and p.num_skipped_residues == 0
    assert p.backbone.shape == (5, 4, 3)
    assert torch.equal(p.backbone[:, 1], p.pos)
    assert p.backbone[:, [0, 2, 3]].isnan().all()
    # residue types in TorchDrug order: A=1, C=6, D=10, E=13, F=16
    assert p.residue_type.tolist() == [1, 6, 10, 13, 16]


def test_from_arrays_numpy_and_torch_inputs_agree():
    pos = _pos(7)
    a = Protein.from_arrays("ACDEFGH", pos, chain_id=np.array([0, 0, 0, 1, 1, 1, 1]),
                            residue_number=np.arange(10, 17), plddt=np.linspace(50, 90, 7), name="x")
    b = Protein.from_arrays("ACDEFGH", torch.from_numpy(pos), chain_id=torch.tensor([0, 0, 0, 1, 1, 1, 1]),
                            residue_number=torch.arange(10, 17), plddt=torch.linspace(50, 90, 7), name="x")
    assert a == b
    assert a.chain_names == ["A", "B"]
    assert a.plddt.dtype == torch.float32
    assert a.num_chains == 2


def test_unknown_letters_become_x():
    p = Protein.from_arrays("acBZUOJX", _pos(8))
    assert p.sequence == "ACXXXXXX"
    assert p.residue_type.tolist() == [1, 6] + [20] * 6


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_ca_names_residue(bad):
    pos = _pos(6)
    pos[3, 1] = bad
    with pytest.raises(ValueError, match="residue index 3"):
        Protein.from_arrays("ACDEFG", pos)


def test_empty_sequence():
    with pytest.raises(ValueError, match="empty"):
        Protein.from_arrays("", np.zeros((0, 3)))


@pytest.mark.parametrize("kwargs", [
    dict(pos=np.zeros((4, 3))),
    dict(pos=np.zeros((5, 2))),
    dict(pos=np.zeros((5,))),
    dict(chain_id=np.zeros(4, dtype=int)),
    dict(residue_number=np.arange(6)),
    dict(plddt=np.ones(3)),
    dict(backbone=np.zeros((5, 3, 3))),
    dict(insertion_code="AB"),
])
def test_wrong_shapes(kwargs):
    args = dict(sequence="ACDEF", pos=_pos(5))
    args.update(kwargs)
    with pytest.raises(ValueError):
        Protein.from_arrays(**args)


def test_invalid_sequence_characters():
    with pytest.raises(ValueError, match="index 2"):
        Protein.from_arrays("AC-DE", _pos(5))


def test_backbone_ca_must_match_pos():
    pos = _pos(4)
    bb = np.full((4, 4, 3), np.nan)
    bb[:, 1] = pos
    bb[:, 0] = pos + 1.0
    p = Protein.from_arrays("ACDE", pos, backbone=bb)
    assert torch.equal(p.backbone[:, 0], torch.from_numpy(pos + 1.0).float())
    bb[2, 1] += 0.5
    with pytest.raises(ValueError, match="residue index 2"):
        Protein.from_arrays("ACDE", pos, backbone=bb)
    bb[2, 1] = np.nan  # a NaN CA in the backbone is filled from pos
    p = Protein.from_arrays("ACDE", pos, backbone=bb)
    assert torch.equal(p.backbone[:, 1], p.pos)


def test_chain_validation():
    with pytest.raises(ValueError, match="negative"):
        Protein.from_arrays("ACD", _pos(3), chain_id=[0, -1, 0])
    with pytest.raises(ValueError, match="chain_names"):
        Protein.from_arrays("ACD", _pos(3), chain_id=[0, 1, 2], chain_names=["A", "B"])
    p = Protein.from_arrays("ACD", _pos(3), chain_id=[0, 1, 1], chain_names=["H", "L"])
    assert p.chain_names == ["H", "L"]
    with pytest.raises(ValueError, match="integers"):
        Protein.from_arrays("ACD", _pos(3), residue_number=[1.5, 2, 3])


def test_plddt_must_be_finite():
    with pytest.raises(ValueError, match="residue index 1"):
        Protein.from_arrays("ACD", _pos(3), plddt=[1.0, math.nan, 2.0])


def test_direct_constructor_validates():
    p = Protein.from_arrays("ACD", _pos(3))
    with pytest.raises(TypeError):
        Protein(name="x", sequence="ACD", residue_type=p.residue_type.int(), pos=p.pos, backbone=p.backbone,
                chain_id=p.chain_id, chain_names=["A"], residue_number=p.residue_number, insertion_code="   ")
    with pytest.raises(ValueError):
        Protein(name="x", sequence="AC", residue_type=p.residue_type, pos=p.pos, backbone=p.backbone,
                chain_id=p.chain_id, chain_names=["A"], residue_number=p.residue_number, insertion_code="   ")


def test_to_and_equality():
    p = Protein.from_arrays("ACDEF", _pos(5), plddt=np.arange(5.0))
    q = p.to("cpu")
    assert q == p and q is not p
    assert p != Protein.from_arrays("ACDEF", _pos(5, seed=1), plddt=np.arange(5.0))
    assert "L=5" in repr(p)
    m = p.to("meta")
    assert m.device.type == "meta" and len(m) == 5


def test_chain_slice_and_split():
    p = Protein.from_arrays("ACDEFG", _pos(6), chain_id=[0, 0, 1, 1, 1, 0], chain_names=["H", "L"],
                            residue_number=[5, 6, 7, 8, 9, 10], insertion_code="  A   ", name="ab")
    h, light = p.split_chains()
    assert h.name == "ab_H" and h.sequence == "ACG" and h.residue_number.tolist() == [5, 6, 10]
    assert light.sequence == "DEF" and light.insertion_code == "A  " and light.chain_names == ["L"]
    assert torch.equal(light.pos, p.pos[2:5])
    assert p.chain_slice("L") == light
    with pytest.raises(KeyError):
        p.chain_slice("Z")
