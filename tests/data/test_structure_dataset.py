"""StructureDataset on real structure files with hand-written label files and expectations."""
import math
import shutil
from pathlib import Path

import pytest
import torch

from esmgear_fast.data.datasets import StructureDataset
from esmgear_fast.data.datasets import structures as structures_module
from esmgear_fast.io import load_structure

STRUCTURES = Path(__file__).resolve().parent / "structures"


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "pdbs"
    (root / "sub").mkdir(parents=True)
    for name in ("1A8O.pdb", "1BD2.pdb.gz", "1hvr.pdb.gz", "pdb1ejg.pdb.gz"):
        shutil.copy(STRUCTURES / name, root / name)
    shutil.copy(STRUCTURES / "4ZHL.cif.gz", root / "sub" / "4ZHL.cif.gz")
    return root


def _csv(tmp_path, text, name="labels.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_unlabelled_folder(folder):
    ds = StructureDataset(folder, workers=2)
    # sorted by relative path; all chains of each file
    assert ds.names == ["1A8O", "1BD2", "1hvr", "pdb1ejg", "4ZHL"]
    assert ds.lengths.tolist() == [70, 815, 198, 46, 257]
    assert ds.task_type is None and ds.tasks == []
    sample = ds[1]
    assert set(sample) == {"protein"}
    ref = load_structure(STRUCTURES / "1BD2.pdb.gz")
    assert sample["protein"].sequence == ref.sequence and torch.equal(sample["protein"].pos, ref.pos)
    # seeded 80/10/10 split of 5 items: round(4.0) = 4 train, round(0.5) = 0 valid, 1 test
    assert ds.num_samples == [4, 0, 1]


def test_multilabel_with_chains_and_split(folder, tmp_path):
    labels = _csv(tmp_path, "name,chain,split,terms\n"
                            "1BD2,A,train,\"GO:2,GO:1\"\n"
                            "1BD2.pdb.gz,D,valid,GO:3\n"
                            "1hvr,,test,\n"
                            "4ZHL,U,train,GO:1\n")
    ds = StructureDataset(folder, labels, task="multilabel")
    assert ds.names == ["1BD2_A", "1BD2_D", "1hvr", "4ZHL_U"]
    assert ds.tasks == ["GO:1", "GO:2", "GO:3"]
    assert ds.lengths.tolist() == [275, 190, 198, 247]
    expected = [[1, 1, 0], [0, 0, 1], [0, 0, 0], [1, 0, 0]]
    assert [ds[i]["target"].tolist() for i in range(4)] == expected
    p = ds[3]["protein"]
    ref = load_structure(STRUCTURES / "4ZHL.cif.gz", chains=["U"])
    assert p.name == "4ZHL_U" and p.sequence == ref.sequence and torch.equal(p.pos, ref.pos)
    train, valid, test = ds.split()
    assert train.names == ["1BD2_A", "4ZHL_U"] and valid.names == ["1BD2_D"] and test.names == ["1hvr"]
    assert train.lengths.tolist() == [275, 247]
    # explicit task list fixes the order; a term outside it is an error naming the line
    ds = StructureDataset(folder, labels, task="multilabel", tasks=["GO:3", "GO:2", "GO:1", "GO:9"])
    assert ds[0]["target"].tolist() == [0, 1, 1, 0]
    with pytest.raises(ValueError, match=r"line 2 \('1BD2_A'\): label 'GO:2' is not in the task list"):
        StructureDataset(folder, labels, task="multilabel", tasks=["GO:1", "GO:3"])


def test_multiclass_binary_regression(folder, tmp_path):
    labels = _csv(tmp_path, "name\tfold\tbinds\tstable\ttm\tdg\n"
                            "1A8O\tb\t1\ttrue\t55.5\t-1.25\n"
                            "1hvr\ta\t0\t\t60\t\n"
                            "pdb1ejg\tc\tyes\tno\t\t2\n", name="labels.tsv")
    ds = StructureDataset(folder, labels, task="multiclass", label_columns=["fold"])
    assert ds.tasks == ["a", "b", "c"]
    assert [ds[i]["target"].item() for i in range(3)] == [1, 0, 2]
    assert ds[0]["target"].dtype == torch.long and ds[0]["target"].shape == ()
    assert ds.target_matrix().tolist() == [1, 0, 2]
    ds = StructureDataset(folder, labels, task="binary", label_columns=["binds", "stable"])
    t = torch.stack([ds[i]["target"] for i in range(3)])
    assert t[:, 0].tolist() == [1, 0, 1] and t[0, 1] == 1 and math.isnan(t[1, 1]) and t[2, 1] == 0
    ds = StructureDataset(folder, labels, task="regression", label_columns=["tm", "dg"])
    t = torch.stack([ds[i]["target"] for i in range(3)])
    assert t[0].tolist() == [55.5, -1.25] and t[1, 0] == 60 and math.isnan(t[1, 1]) and math.isnan(t[2, 0])
    assert ds.tasks == ["tm", "dg"] and ds.task_type == "regression"
    assert torch.allclose(ds.target_matrix(), t, equal_nan=True)
    with pytest.raises(ValueError, match=r"line 2 \('1A8O'\): column 'fold': 'b' is not a number"):
        StructureDataset(folder, labels, task="regression", label_columns=["fold"])
    with pytest.raises(ValueError, match="'55.5' is not a binary label"):
        StructureDataset(folder, labels, task="binary", label_columns=["tm"])
    with pytest.raises(ValueError, match="exactly one label column"):
        StructureDataset(folder, labels, task="multiclass")


def test_random_split_is_seeded(folder):
    files = sorted(folder.rglob("*.*z")) + [folder / "1A8O.pdb"]
    a = StructureDataset(files, seed=3, split_fractions=(0.6, 0.2, 0.2))
    b = StructureDataset([str(f) for f in files], seed=3, split_fractions=(0.6, 0.2, 0.2))
    assert a.num_samples == [3, 1, 1]
    assert a.split_names == b.split_names
    assert StructureDataset(str(folder / "*.pdb*"), seed=0).names == ["1A8O", "1BD2", "1hvr", "pdb1ejg"]


def test_cache_reused(folder, monkeypatch):
    first = StructureDataset(folder)
    assert first.cache_path.parent == folder / "esmgear_fast_cache"
    monkeypatch.setattr(structures_module, "prepare", lambda *a, **k: pytest.fail("parsed again"))
    again = StructureDataset(folder)
    assert again.names == first.names and torch.equal(again[2]["protein"].pos, first[2]["protein"].pos)


def test_bad_input(folder, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"2 row\(s\) name structures that are not among.*'9XYZ'.*'1abc'"):
        StructureDataset(folder, _csv(tmp_path, "name,y\n9XYZ,1\n1A8O,0\n1abc,1\n"), task="binary")
    with pytest.raises(ValueError, match=r"line 3: '1A8O' is already on line 2"):
        StructureDataset(folder, _csv(tmp_path, "name,y\n1A8O,1\n1A8O,0\n"), task="binary")
    with pytest.raises(ValueError, match=r"chain 'Q' is not in .*1BD2.pdb.gz"):
        StructureDataset(folder, _csv(tmp_path, "name,chain,y\n1BD2,Q,1\n"), task="binary")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        StructureDataset(folder, _csv(tmp_path, "name,split,y\n1A8O,dev,1\n"), task="binary")
    with pytest.raises(ValueError, match="no 'name' column"):
        StructureDataset(folder, _csv(tmp_path, "id,y\n1A8O,1\n"), task="binary")
    with pytest.raises(ValueError, match="task must be one of"):
        StructureDataset(folder, _csv(tmp_path, "name,y\n1A8O,1\n"))
    shutil.copy(STRUCTURES / "1A8O.cif", folder / "sub" / "1A8O.cif")
    with pytest.raises(ValueError, match="two structure files have the name '1A8O'"):
        StructureDataset(folder)
    (folder / "sub" / "1A8O.cif").unlink()
    (folder / "empty.pdb").write_text("HEADER    EMPTY\nEND\n")
    with pytest.raises(ValueError, match=r"1 structure file\(s\) could not be read.*empty.pdb"):
        StructureDataset(folder)
    with pytest.warns(UserWarning, match="left out"):
        ds = StructureDataset(folder, on_error="skip")
    assert "empty" not in ds.names and len(ds) == 5
    assert [p for p, _ in ds.failures] == ["empty.pdb"]
    with pytest.raises(FileNotFoundError, match="neither a folder"):
        StructureDataset(tmp_path / "nope")
