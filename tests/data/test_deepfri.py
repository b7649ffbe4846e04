"""EnzymeCommission / GeneOntology on small DeepFRI-layout folders built from real PDB chains.

The fixture (tests/data/fixtures/deepfri, made by make_deepfri_fixtures.py) holds real chains of the files in
tests/data/structures; every expectation below is written by hand from the fixture's annotation, test-cutoff
and split files, following TorchDrug 0.2.1's rules.
"""
import os
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from esmgear_fast.data import collate_samples
from esmgear_fast.data.datasets import EnzymeCommission, GeneOntology
from esmgear_fast.data.datasets import deepfri as deepfri_module
from esmgear_fast.data.samplers import LengthBatchSampler
from esmgear_fast.data.transforms import TruncateProtein
from esmgear_fast.io import load_structure

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "fixtures" / "deepfri"
STRUCTURES = HERE / "structures"

EC_TASKS = ["3.4.21.4", "3.4.21.5", "3.4.23.16", "2.1.1.37", "1.1.1.37", "1.1.1.27", "3.2.1.17", "2.7.11.1"]
# train sorted by file name (1HVR-B_46.pdb is truncated -> listed failure), then valid, then test
EC_TRAIN = ["1BD2-A", "1BD2-B", "1BD2-D", "1BD2-E", "1HVR-A", "1TRM-A", "3MHT-A"]
EC_VALID = ["1A8O-A", "1EJG-A", "1H8D-H"]
EC_TARGETS = {  # indices into EC_TASKS
    "1BD2-A": [6, 7], "1BD2-B": [7], "1BD2-D": [5], "1BD2-E": [1, 4, 5], "1HVR-A": [2], "1TRM-A": [0],
    "3MHT-A": [3], "1A8O-A": [7], "1EJG-A": [6], "1H8D-H": [1], "1BD2-C": [0], "3D5T-C": [4],
}
EC_RESIDUES = {"1BD2-A": 275, "1BD2-B": 99, "1BD2-C": 9, "1BD2-D": 190, "1BD2-E": 242, "1HVR-A": 99,
               "1TRM-A": 223, "3MHT-A": 327, "1A8O-A": 70, "1EJG-A": 46, "1H8D-H": 251, "3D5T-C": 323}
SOURCE = {"1BD2-A": ("1BD2.pdb.gz", "A"), "1BD2-E": ("1BD2.pdb.gz", "E"), "1H8D-H": ("1H8D_H.pdb.gz", "H"),
          "3MHT-A": ("pdb3mht.pdb.gz", "A"), "1EJG-A": ("pdb1ejg.pdb.gz", "A")}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("deepfri")
    shutil.copytree(FIXTURE, root, dirs_exist_ok=True)
    return root


def _one_hot(indices, n):
    t = torch.zeros(n)
    t[indices] = 1
    return t


def _ec(path, **kw):
    with pytest.warns(UserWarning):  # the truncated file and the chain without structure are reported
        return EnzymeCommission(path, progress=False, **kw)


def test_ec_splits_targets_and_reports(data_dir):
    ds = _ec(data_dir, workers=2)
    assert ds.tasks == EC_TASKS and ds.task_type == "multilabel"
    assert ds.num_samples == [7, 3, 2]
    assert ds.names == EC_TRAIN + EC_VALID + ["1BD2-C", "3D5T-C"]  # 2N0N-A removed at 0.95
    assert ds.num_filtered == 1
    assert [f for f, _ in ds.failures] == ["1HVR-B_46.pdb"] and "truncated" in ds.failures[0][1]
    assert ds.missing_structures == ["4ZHL-U"]
    assert ds.lengths.tolist() == [EC_RESIDUES[n] for n in ds.names]
    for i, name in enumerate(ds.names):
        sample = ds[i]
        assert sample["protein"].name == name
        assert torch.equal(sample["target"], _one_hot(EC_TARGETS[name], 8)), name
        assert sample["target"].dtype == torch.float32
    assert torch.equal(ds.target_matrix(), torch.stack([_one_hot(EC_TARGETS[n], 8) for n in ds.names]))
    train, valid, test = ds.split()
    assert train.names == EC_TRAIN and valid.names == EC_VALID and test.names == ["1BD2-C", "3D5T-C"]
    assert isinstance(test, EnzymeCommission) and test.tasks == EC_TASKS
    assert torch.equal(test[1]["target"], _one_hot([4], 8))
    failures_tsv = data_dir / "EnzymeCommission" / "esmgear_fast_cache" / "train.pt.failures.tsv"
    assert "1HVR-B_46.pdb" in failures_tsv.read_text()


def test_ec_proteins_equal_the_original_chains(data_dir):
    ds = _ec(data_dir)
    for name, (source, chain) in SOURCE.items():
        ref = load_structure(STRUCTURES / source, chains=[chain])
        p = ds[ds.names.index(name)]["protein"]
        assert p.sequence == ref.sequence
        assert torch.equal(p.pos, ref.pos) and torch.equal(p.residue_number, ref.residue_number)
        assert p.chain_names == [chain]


@pytest.mark.parametrize("cutoff, test_names", [(0.3, []), (0.4, ["3D5T-C"]), (0.5, ["1BD2-C", "3D5T-C"]),
                                                (0.7, ["1BD2-C", "3D5T-C"])])
def test_ec_test_cutoff(data_dir, cutoff, test_names):
    ds = _ec(data_dir, test_cutoff=cutoff)
    assert ds.split()[2].names == test_names
    assert ds.num_samples == [7, 3, len(test_names)]


def test_ec_reload_from_cache_and_reparse_on_change(data_dir, monkeypatch):
    first = _ec(data_dir)

    def no_parse(*args, **kwargs):
        raise AssertionError("parsed again although the cache is valid")

    monkeypatch.setattr(deepfri_module, "parse_members_to_cache", no_parse)
    again = _ec(data_dir)
    assert again.names == first.names and again.lengths.tolist() == first.lengths.tolist()
    assert again.failures == first.failures
    assert torch.equal(again[3]["protein"].pos, first[3]["protein"].pos)
    monkeypatch.undo()
    valid_zip = data_dir / "EnzymeCommission" / "valid.zip"
    st = valid_zip.stat()
    os.utime(valid_zip, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    calls = []
    real = deepfri_module.parse_members_to_cache
    monkeypatch.setattr(deepfri_module, "parse_members_to_cache", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert _ec(data_dir).names == first.names
    assert len(calls) == 1  # only the changed split


def test_ec_transform_and_loader(data_dir):
    ds = _ec(data_dir, transform=TruncateProtein(max_length=100))
    sample = ds[0]
    assert len(sample["protein"]) == 100 and torch.equal(sample["target"], _one_hot([6, 7], 8))
    assert ds.lengths[0] == 275  # lengths are before the transform
    sampler = LengthBatchSampler(torch.clamp(ds.lengths, max=100), max_residues=300, shuffle=False)
    batches = list(DataLoader(ds, batch_sampler=sampler, collate_fn=collate_samples))
    assert [b["names"] for b in batches][:2] == [["1BD2-A", "1BD2-B", "1BD2-D"], ["1BD2-E", "1HVR-A", "1TRM-A"]]
    assert batches[0]["target"].shape == (3, 8)
    assert batches[0]["protein"].num_residues.tolist() == [100, 99, 100]
    # worker processes reopen the memory-mapped caches and give the same batches
    parallel = list(DataLoader(ds, batch_sampler=sampler, collate_fn=collate_samples, num_workers=2))
    assert [b["names"] for b in parallel] == [b["names"] for b in batches]
    assert all(torch.equal(a["protein"].pos, b["protein"].pos) and torch.equal(a["target"], b["target"])
               for a, b in zip(parallel, batches))


GO = {  # branch -> (tasks, {name: positive indices}); chains without terms keep all-zero targets
    "MF": (["GO:0004252", "GO:0004190", "GO:0008168", "GO:0003677"],
           {"1BD2-B": [2, 3], "1BD2-D": [], "1HVR-A": [1], "1TRM-A": [0], "1EJG-A": [], "1H8D-H": [0],
            "1A8O-A": [3], "3D5T-C": []}),
    "BP": (["GO:0006508", "GO:0032259", "GO:0006355"],
           {"1BD2-B": [1], "1BD2-D": [], "1HVR-A": [0, 2], "1TRM-A": [0], "1EJG-A": [], "1H8D-H": [0],
            "1A8O-A": [], "3D5T-C": [2]}),
    "CC": (["GO:0005576", "GO:0005634"],
           {"1BD2-B": [], "1BD2-D": [0], "1HVR-A": [0, 1], "1TRM-A": [0], "1EJG-A": [], "1H8D-H": [],
            "1A8O-A": [1], "3D5T-C": [1]}),
}


@pytest.mark.parametrize("branch", ["MF", "BP", "CC"])
def test_go_branches(data_dir, branch):
    ds = GeneOntology(data_dir, branch=branch, progress=False)
    tasks, targets = GO[branch]
    assert ds.tasks == tasks
    assert ds.names == ["1BD2-B", "1BD2-D", "1HVR-A", "1TRM-A", "1EJG-A", "1H8D-H", "1A8O-A", "3D5T-C"]
    assert ds.num_samples == [4, 2, 2] and ds.failures == [] and ds.missing_structures == []
    for i, name in enumerate(ds.names):
        assert torch.equal(ds[i]["target"], _one_hot(targets[name], len(tasks))), (branch, name)
    if branch == "MF":
        assert ds.task_descriptions[2] == "methyltransferase activity"
    ds = GeneOntology(data_dir, branch=branch, test_cutoff=0.5, progress=False)
    assert ds.split()[2].names == ["3D5T-C"]


def test_rdkit_check(data_dir, monkeypatch):
    # RDKit's reader (TorchDrug's) rejects 3D5T-C, which ours reads, and reads the truncated 1HVR-B partially
    pytest.importorskip("rdkit")
    ds = _ec(data_dir, rdkit_check=True)
    assert ds.rdkit_rejected == ["3D5T-C"] and ds.rdkit_only == ["1HVR-B_46.pdb"]
    assert _ec(data_dir).rdkit_rejected is None
    monkeypatch.setattr(deepfri_module, "rdkit_rejections", lambda *a, **k: pytest.fail("not cached"))
    assert _ec(data_dir, rdkit_check=True).rdkit_rejected == ["3D5T-C"]


def test_rdkit_check_needs_rdkit(data_dir, monkeypatch):
    import esmgear_fast.data.datasets._base as base

    monkeypatch.setitem(__import__("sys").modules, "rdkit", None)
    with pytest.raises(ImportError, match="pip install rdkit"):
        base.rdkit_rejections([("", "x.pdb")])


def test_layout_variants(tmp_path):
    # the data folder itself, an extracted split folder, and the downloaded archive
    shutil.copytree(FIXTURE / "EnzymeCommission", tmp_path / "a")
    with zipfile.ZipFile(tmp_path / "a" / "valid.zip") as zf:
        zf.extractall(tmp_path / "a")
    (tmp_path / "a" / "valid.zip").unlink()
    ds = _ec(tmp_path / "a", workers=1)
    assert ds.split()[1].names == EC_VALID
    archive_dir = tmp_path / "b"
    archive_dir.mkdir()
    with zipfile.ZipFile(archive_dir / "EnzymeCommission.zip", "w") as zf:
        for f in sorted((FIXTURE / "EnzymeCommission").iterdir()):
            zf.write(f, f"EnzymeCommission/{f.name}")
    ds = _ec(archive_dir, workers=1)
    assert ds.num_samples == [7, 3, 2] and (archive_dir / "EnzymeCommission" / "train.zip").is_file()


def test_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="zenodo.org/record/6622158/files/EnzymeCommission.zip"):
        EnzymeCommission(tmp_path / "nothing", progress=False)
    with pytest.raises(ValueError, match="test_cutoff"):
        EnzymeCommission(FIXTURE, test_cutoff=0.9, progress=False)
    with pytest.raises(ValueError, match="branch"):
        GeneOntology(FIXTURE, branch="XX", progress=False)

    def copy(name):
        d = tmp_path / name / "EnzymeCommission"
        shutil.copytree(FIXTURE / "EnzymeCommission", d)
        return d

    d = copy("unknown_term")
    tsv = d / "nrPDB-EC_annot.tsv"
    tsv.write_text(tsv.read_text().replace("1TRM-A\t3.4.21.4", "1TRM-A\t3.4.21.4,9.9.9.9"))
    with pytest.raises(ValueError, match=r"line \d+ \('1TRM-A'\): term '9.9.9.9' is not in the task list"):
        EnzymeCommission(d, progress=False)

    d = copy("duplicate")
    tsv = d / "nrPDB-EC_annot.tsv"
    tsv.write_text(tsv.read_text() + "1TRM-A\t3.2.1.17\n")  # line 19: the last line wins, as in TorchDrug
    with pytest.warns(UserWarning, match="annotated more than once"):
        ds = EnzymeCommission(d, progress=False, workers=1)
    assert ds.duplicate_annotations == [("1TRM-A", 19)]
    assert torch.equal(ds[ds.names.index("1TRM-A")]["target"], _one_hot([6], 8))

    d = copy("no_annotation")
    tsv = d / "nrPDB-EC_annot.tsv"
    tsv.write_text("".join(line for line in tsv.read_text().splitlines(True) if not line.startswith("1TRM-A")))
    with pytest.raises(ValueError, match=r"no annotation line for '1TRM-A' \(structure file 1TRM-A_2201.pdb"):
        EnzymeCommission(d, progress=False, workers=1)

    d = copy("truncated_zip")
    data = (d / "test.zip").read_bytes()
    (d / "test.zip").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="test.zip: not a readable zip archive"):
        EnzymeCommission(d, progress=False, workers=1)

    d = copy("missing_split")
    (d / "valid.zip").unlink()
    with pytest.raises(FileNotFoundError, match="valid split"):
        EnzymeCommission(d, progress=False, workers=1)


def test_same_samples_and_labels_as_torchdrug(tmp_path, monkeypatch):
    """Optional peer check: TorchDrug 0.2.1's own EnzymeCommission/GeneOntology on the same folders.

    Runs only where torchdrug (and rdkit) import, e.g. PYTHONPATH=<torchdrug 0.2.1>:<rdkit>. TorchDrug reads
    the fixture offline (its download step is pointed at a local EnzymeCommission.zip). Expected differences
    are exactly the reader disagreements: 3D5T-C (RDKit rejects it, ours reads it) and 1HVR-B (truncated:
    RDKit reads the first part, ours reports the file).
    """
    pytest.importorskip("rdkit")
    td = pytest.importorskip("torchdrug")
    from torchdrug import datasets as td_datasets
    from torchdrug import utils as td_utils

    for folder, td_cls, ours_kw in (("EnzymeCommission", td_datasets.EnzymeCommission, {}),
                                    ("GeneOntology", td_datasets.GeneOntology, {"branch": "BP"})):
        root = tmp_path / folder
        root.mkdir()
        with zipfile.ZipFile(root / f"{folder}.zip", "w") as zf:
            for f in sorted((FIXTURE / folder).iterdir()):
                zf.write(f, f"{folder}/{f.name}")
        monkeypatch.setattr(td_utils, "download", lambda url, path, save_file=None, md5=None, _r=root:
                            str(_r / f"{folder}.zip"))
        for cutoff in (0.95, 0.5):
            theirs = td_cls(str(root), test_cutoff=cutoff, verbose=0, **ours_kw)
            their_keys = [os.path.basename(f).split("_")[0] for f in theirs.pdb_files]
            ours = (_ec if folder == "EnzymeCommission" else
                    lambda p, **k: GeneOntology(p, progress=False, **k))(FIXTURE_COPY(tmp_path, folder, cutoff),
                                                                        test_cutoff=cutoff, rdkit_check=True,
                                                                        **ours_kw)
            ec = folder == "EnzymeCommission"
            assert ours.tasks == list(theirs.tasks)
            assert [k for k in their_keys if k != "1HVR-B"] == [n for n in ours.names if n != "3D5T-C"]
            assert set(their_keys) - set(ours.names) == ({"1HVR-B"} if ec else set())
            assert set(ours.names) - set(their_keys) == {"3D5T-C"}
            assert ours.rdkit_rejected == ["3D5T-C"] and ours.rdkit_only == (["1HVR-B_46.pdb"] if ec else [])
            assert list(theirs.num_samples) == [n + (k == 0 and ec) - (k == 2) for k, n in enumerate(ours.num_samples)]
            for i, key in enumerate(their_keys):
                if key in ours.names:
                    assert torch.equal(theirs[i]["targets"].float(), ours[ours.names.index(key)]["target"]), key


def FIXTURE_COPY(tmp_path, folder, cutoff):
    dest = tmp_path / f"ours_{folder}_{cutoff}"
    if not dest.exists():
        shutil.copytree(FIXTURE / folder, dest / folder)
    return dest


def test_command_line(tmp_path, capsys):
    shutil.copytree(FIXTURE / "GeneOntology", tmp_path / "GeneOntology")
    assert deepfri_module.main(["GO", str(tmp_path), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "GeneOntology (test_cutoff=0.95): 4 / 2 / 2 train / valid / test, 4 tasks, 1 removed" in out
    assert "0 unreadable file(s)" in out
    assert (tmp_path / "GeneOntology" / "esmgear_fast_cache" / "train.pt").is_file()
