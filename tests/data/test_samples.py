"""collate_samples / move_to on real proteins."""
import pytest
import torch

from esmgear_fast.data.batch import ProteinBatch
from esmgear_fast.data.samples import collate_samples, move_to
from esmgear_fast.testing import real_proteins


@pytest.fixture(scope="module")
def proteins():
    return real_proteins(3, max_len=120)


def test_single_protein_multilabel(proteins):
    samples = [{"protein": p, "target": torch.tensor([1.0, 0.0, float(i)])} for i, p in enumerate(proteins)]
    out = collate_samples(samples)
    assert set(out) == {"protein", "target", "names"}
    assert isinstance(out["protein"], ProteinBatch)
    assert out["protein"].num_residues.tolist() == [len(p) for p in proteins]
    assert torch.equal(out["target"], torch.tensor([[1.0, 0, 0], [1, 0, 1], [1, 0, 2]]))
    assert out["names"] == [p.name for p in proteins]
    # residues packed in sample order
    assert torch.equal(out["protein"].pos[: len(proteins[0])], proteins[0].pos)


def test_multiclass_and_pairs_and_names(proteins):
    out = collate_samples([{"protein": p, "target": torch.tensor(i)} for i, p in enumerate(proteins)])
    assert out["target"].dtype == torch.long and out["target"].tolist() == [0, 1, 2]
    pairs = [{"wild_type": proteins[0], "mutant": proteins[1], "target": torch.tensor([1.0]), "name": "m1"},
             {"wild_type": proteins[1], "mutant": proteins[2], "target": torch.tensor([0.0]), "name": "m2"}]
    out = collate_samples(pairs)
    assert out["names"] == ["m1", "m2"]
    assert out["wild_type"].names == [proteins[0].name, proteins[1].name]
    assert out["mutant"].names == [proteins[1].name, proteins[2].name]
    assert out["target"].shape == (2, 1)
    unlabelled = collate_samples([{"protein": p} for p in proteins])
    assert set(unlabelled) == {"protein", "names"}


def test_errors(proteins):
    with pytest.raises(ValueError, match="empty"):
        collate_samples([])
    with pytest.raises(ValueError, match="sample 1 key 'target' has shape"):
        collate_samples([{"protein": proteins[0], "target": torch.zeros(3)},
                         {"protein": proteins[1], "target": torch.zeros(4)}])
    with pytest.raises(ValueError, match="sample 1 has keys"):
        collate_samples([{"protein": proteins[0], "target": torch.zeros(3)}, {"protein": proteins[1]}])
    with pytest.raises(TypeError, match="not a Protein"):
        collate_samples([{"protein": "1abc"}])
    with pytest.raises(ValueError, match="no protein"):
        collate_samples([{"target": torch.zeros(1)}])


def test_move_to(proteins):
    out = collate_samples([{"protein": p, "target": torch.zeros(2)} for p in proteins])
    moved = move_to(out, "meta")
    assert moved["protein"].pos.device.type == "meta" and moved["target"].device.type == "meta"
    assert moved["names"] == out["names"]
    assert out["target"].device.type == "cpu"
    assert move_to((torch.zeros(1), "x", None), "meta")[1:] == ("x", None)
