"""Transforms on real proteins: which residues are kept, checked against hand-computed windows."""
import pytest
import torch

from esmgear_fast.data.transforms import (Compose, RandomCrop, TruncateProtein, TruncateProteinPair,
                                          protein_slice)
from esmgear_fast.io import Protein
from esmgear_fast.testing import real_proteins


@pytest.fixture(scope="module")
def long_protein():
    return real_proteins(1, min_len=300, max_len=600)[0]


def _mutate(p: Protein, index: int) -> Protein:
    seq = list(p.sequence)
    seq[index] = "W" if seq[index] != "W" else "A"
    return Protein.from_arrays("".join(seq), p.pos, backbone=p.backbone, name=p.name + "_mut")


def test_truncate_keeps_prefix(long_protein):
    L = len(long_protein)
    out = TruncateProtein(max_length=100)({"protein": long_protein, "target": torch.ones(3)})
    p = out["protein"]
    assert len(p) == 100
    assert p.sequence == long_protein.sequence[:100]
    assert torch.equal(p.pos, long_protein.pos[:100])
    assert torch.equal(p.residue_number, long_protein.residue_number[:100])
    assert torch.equal(out["target"], torch.ones(3))
    assert len(long_protein) == L  # input untouched
    # default max_length is 550: a shorter protein is returned as is
    assert TruncateProtein()(long_protein) is long_protein
    assert TruncateProtein(max_length=L)(long_protein) is long_protein


def test_truncate_random_window(long_protein):
    L = len(long_protein)
    g = torch.Generator().manual_seed(0)
    starts = set()
    t = TruncateProtein(max_length=L - 3, random=True, generator=g)
    for _ in range(200):
        p = t(long_protein)
        start = long_protein.sequence.find(p.sequence)
        assert torch.equal(p.pos, long_protein.pos[start:start + L - 3])
        starts.add(int(p.residue_number[0] - long_protein.residue_number[0]))
    # TorchDrug draws torch.randint(L - max_length): starts 0, 1, 2 (never 3)
    assert starts == {0, 1, 2} or starts <= {0, 1, 2}
    assert len(starts) == 3


def test_random_crop(long_protein):
    L = len(long_protein)
    g = torch.Generator().manual_seed(1)
    crop = RandomCrop(50, generator=g)
    seen = set()
    for _ in range(50):
        p = crop(long_protein)
        assert len(p) == 50
        offsets = [i for i in range(L - 49) if long_protein.sequence[i:i + 50] == p.sequence
                   and torch.equal(long_protein.pos[i:i + 50], p.pos)]
        assert len(offsets) == 1 and offsets[0] <= L - 51
        seen.add(offsets[0])
    assert len(seen) > 10
    short = real_proteins(1, max_len=49)[0]
    assert crop(short) is short


def test_truncate_pair_window(long_protein):
    L = len(long_protein)  # 300..600
    m = 250
    mutant = _mutate(long_protein, m)
    t = TruncateProteinPair(max_length=200)
    out = t({"wild_type": long_protein, "mutant": mutant, "target": torch.zeros(1)})
    # start = max(0, min(250 - 100, L - 200)) = 150 (L >= 350) or L - 200
    start = min(150, L - 200)
    assert out["wild_type"].sequence == long_protein.sequence[start:start + 200]
    assert out["mutant"].sequence == mutant.sequence[start:start + 200]
    assert torch.equal(out["mutant"].pos, mutant.pos[start:start + 200])
    # mutation near the start: window [0, 200)
    out = t({"wild_type": long_protein, "mutant": _mutate(long_protein, 10)})
    assert out["wild_type"].sequence == long_protein.sequence[:200]
    # near the end: window [L-200, L)
    out = t({"wild_type": long_protein, "mutant": _mutate(long_protein, L - 2)})
    assert out["wild_type"].sequence == long_protein.sequence[L - 200:]
    # short pairs unchanged; random windows always contain the mutation
    assert TruncateProteinPair()({"wild_type": long_protein, "mutant": mutant})["mutant"] is mutant
    g = torch.Generator().manual_seed(0)
    rt = TruncateProteinPair(max_length=100, random=True, generator=g)
    for _ in range(50):
        o = rt({"wild_type": long_protein, "mutant": mutant})
        diff = [i for i, (a, b) in enumerate(zip(o["wild_type"].sequence, o["mutant"].sequence)) if a != b]
        assert len(diff) == 1 and len(o["mutant"]) == 100


def test_errors(long_protein):
    with pytest.raises(ValueError, match="identical residue types"):
        TruncateProteinPair(max_length=10)({"wild_type": long_protein, "mutant": long_protein})
    with pytest.raises(ValueError, match="has .* residues but mutant"):
        TruncateProteinPair(max_length=10)({"wild_type": long_protein,
                                            "mutant": protein_slice(long_protein, 0, 20)})
    with pytest.raises(KeyError, match="none of the keys"):
        TruncateProtein(10)({"graph": long_protein})
    with pytest.raises(ValueError, match="max_length"):
        TruncateProtein(0)
    with pytest.raises(ValueError, match="non-empty range"):
        protein_slice(long_protein, 5, 5)


def test_compose(long_protein):
    t = Compose([TruncateProtein(120), None, Compose([TruncateProtein(100)])])
    assert len(t.transforms) == 2
    assert t(long_protein).sequence == long_protein.sequence[:100]
