"""Atom3D PSR / MSP loaders on committed fixture LMDBs built from real structures (make_atom3d_afdb_fixtures.py)."""
import gzip
import json
import os
import shutil
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch

from esmgear_fast.data.datasets.atom3d import MSP, PSR, Atom3DLMDB, write_atom3d_lmdb
from esmgear_fast.io import load_structure
from esmgear_fast.testing import test_data_dir

FIXTURES = test_data_dir() / "fixtures" / "atom3d"
STRUCTURES = test_data_dir() / "structures"


@pytest.fixture(scope="module")
def psr_dir(tmp_path_factory):
    dst = tmp_path_factory.mktemp("psr") / "PSR"
    shutil.copytree(FIXTURES / "PSR", dst)
    return dst


@pytest.fixture(scope="module")
def msp_dir(tmp_path_factory):
    dst = tmp_path_factory.mktemp("msp") / "MSP"
    shutil.copytree(FIXTURES / "MSP", dst)
    return dst


@pytest.fixture(scope="module")
def psr(psr_dir):
    return PSR(psr_dir, verbose=False)


@pytest.fixture(scope="module")
def msp(msp_dir):
    return MSP(msp_dir, verbose=False)


def _ca_lines(path: Path, model: int = 1):
    """(chain, resseq, x, y, z) of every CA ATOM/HETATM line of MODEL `model`, read by hand."""
    opener = gzip.open if path.suffix == ".gz" else open
    out, current = [], 1
    with opener(path, "rt") as handle:
        for line in handle:
            if line.startswith("MODEL"):
                current = int(line.split()[1])
            elif line.startswith(("ATOM", "HETATM")) and current == model and line[12:16].strip() == "CA" \
                    and line[76:78].strip() == "C" and line[16] in " A":
                out.append((line[21], int(line[22:26]), line[17:20].strip(),
                            float(line[30:38]), float(line[38:46]), float(line[46:54])))
    return out


# -------------------------------------------------------------------------- the Atom3D entry format

def test_fixture_is_atom3d_format(psr_dir):
    # read the raw LMDB as Atom3D's LMDBDataset does: metadata keys, str(i) keys, gzip of JSON, split frames
    env = lmdb.open(str(psr_dir / "split-by-year" / "data" / "train"), readonly=True, lock=False)
    with env.begin() as txn:
        assert txn.get(b"num_examples") == b"3"
        assert txn.get(b"serialization_format") == b"json"
        assert json.loads(txn.get(b"id_to_idx")) == {"('T0001', 'model_1')": 0, "('T0001', 'model_2')": 1,
                                                     "('T0001', 'model_3')": 2}
        item = json.loads(gzip.decompress(txn.get(b"1")))
        assert txn.get(b"3") is None
    env.close()
    assert set(item) == {"atoms", "id", "file_path", "scores"}
    assert set(item["atoms"]) == {"columns", "index", "data"}
    assert item["atoms"]["columns"][:5] == ["ensemble", "subunit", "structure", "model", "chain"]
    assert item["scores"]["gdt_ts"] == 0.5
    assert item["atoms"]["index"] == list(range(len(item["atoms"]["data"])))


def test_reader_matches_raw(psr_dir):
    db = Atom3DLMDB(psr_dir / "split-by-year" / "data" / "test")
    assert len(db) == 1 and db.serialization_format == "json"
    assert db[0]["id"] == "('T0003', '1hvr')"
    with pytest.raises(IndexError):
        db[1]


# -------------------------------------------------------------------------- PSR

def test_psr_counts_labels(psr):
    assert len(psr) == 5
    assert psr.num_samples == [3, 1, 1]
    assert psr.tasks == ["gdt_ts"] and psr.task_type == "regression"
    assert torch.equal(psr.targets.flatten(), torch.tensor([0.8125, 0.5, 0.25, 0.9, 0.375]))
    assert psr.target_names == ["T0001", "T0001", "T0001", "T0002", "T0003"]
    train, valid, test = psr.split()
    assert [len(train), len(valid), len(test)] == [3, 1, 1]
    assert isinstance(train, PSR)
    assert valid.names == ["('T0002', '1A8O')"]
    item = test[0]
    assert set(item) == {"protein", "target"}
    assert item["target"].dtype == torch.float32 and item["target"].shape == (1,)
    assert item["target"].item() == 0.375


def test_psr_residues_match_structure_files(psr):
    # val = 1A8O: MSE mapped to M, waters skipped; same residues and coordinates as the PDB reader
    p = psr.split()[1][0]["protein"]
    ref = load_structure(STRUCTURES / "1A8O.pdb")
    assert p.sequence == ref.sequence and len(p) == 70
    assert torch.allclose(p.backbone, ref.backbone, atol=1e-5, equal_nan=True)
    # hand check: residue 152 ASP CA from the file text
    ca = [c for c in _ca_lines(STRUCTURES / "1A8O.pdb") if c[1] == 152][0]
    k = p.residue_number.tolist().index(152)
    assert p.sequence[k] == "D"
    assert p.pos[k].tolist() == pytest.approx(ca[3:], abs=1e-5)
    # test = 1hvr: two chains in order, ligand skipped
    q = psr.split()[2][0]["protein"]
    ref = load_structure(STRUCTURES / "1hvr.pdb.gz")
    assert q.chain_names == ["A", "B"] and q.sequence == ref.sequence
    assert torch.equal(q.chain_id, ref.chain_id)
    assert torch.allclose(q.pos, ref.pos, atol=1e-5)


def test_psr_decoys_are_separate_models(psr):
    # train = NMR models 1-3 of neopetrosiamide (hydrogens present in the tables, ignored here)
    path = STRUCTURES / "nmr_neopetrosiamide.pdb.gz"
    for k, model in enumerate((1, 2, 3)):
        p = psr[k]["protein"]
        cas = _ca_lines(path, model)
        assert len(p) == len(cas) == 28
        assert torch.allclose(p.pos, torch.tensor([c[3:] for c in cas]), atol=1e-5)
    assert not torch.allclose(psr[0]["protein"].pos, psr[1]["protein"].pos)
    assert psr.lengths == [28, 28, 28, 70, len(load_structure(STRUCTURES / "1hvr.pdb.gz"))]


def test_psr_cache_reused_and_rebuilt(psr_dir, capsys):
    PSR(psr_dir, verbose=True)  # the module fixture built the cache already
    assert "parsing" not in capsys.readouterr().err
    mdb = psr_dir / "split-by-year" / "data" / "val" / "data.mdb"
    st = mdb.stat()
    os.utime(mdb, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    again = PSR(psr_dir, verbose=True)
    err = capsys.readouterr().err
    assert "changed" in err and "data/val" in err and "data/train" not in err
    assert len(again) == 5


def test_esm_gearnet_layout_and_missing(tmp_path):
    nested = tmp_path / "PSR-split-by-year"
    shutil.copytree(FIXTURES / "PSR", nested)
    assert len(PSR(tmp_path, cache_dir=tmp_path / "cache", verbose=False)) == 5
    with pytest.raises(FileNotFoundError) as info:
        PSR(tmp_path / "nowhere")
    message = str(info.value)
    assert "zenodo.org/record/4915648" in message and "split-by-year/data/val/data.mdb" in message
    with pytest.raises(FileNotFoundError, match="4962515"):
        MSP(tmp_path / "nowhere")


# -------------------------------------------------------------------------- MSP

def test_msp_counts_labels_pairs(msp):
    assert len(msp) == 4 and msp.num_samples == [2, 1, 1]
    assert msp.tasks == ["label"] and msp.task_type == "binary"
    assert torch.equal(msp.targets.flatten(), torch.tensor([1.0, 0.0, 0.0, 1.0]))
    assert msp.mutations == ["DA25N", "LA189A", "FA6A", "HA57A"]
    files = ["1hvr.pdb.gz", "1A8O.pdb", "2n0n_M1.pdb", "1TRM_A.pdb.gz"]
    numbers = [25, 189, 6, 57]
    letters = ["N", "A", "A", "A"]
    for i in range(4):
        item = msp[i]
        assert set(item) == {"wild_type", "mutant", "target"}
        wt, mt = item["wild_type"], item["mutant"]
        ref = load_structure(STRUCTURES / files[i])
        assert wt.sequence == ref.sequence
        assert torch.allclose(wt.backbone, ref.backbone, atol=1e-5, equal_nan=True)
        assert len(mt) == len(wt) == msp.lengths[i]
        diff = (wt.residue_type != mt.residue_type).nonzero().flatten().tolist()
        site = msp.mutation_sites[i]
        assert diff == [site]
        assert wt.residue_number[site].item() == numbers[i] and wt.chain_names[wt.chain_id[site]] == "A"
        assert mt.sequence[site] == letters[i]
        # the in-silico mutant keeps the backbone
        assert torch.allclose(mt.backbone, wt.backbone, equal_nan=True)
    train, valid, test = msp.split()
    assert isinstance(test, MSP) and test.mutations == ["HA57A"]


def test_msp_collates(msp):
    from esmgear_fast.data.samples import collate_samples

    batch = collate_samples([msp[0], msp[1]])
    assert batch["target"].shape == (2, 1)
    assert batch["wild_type"].num_residues.tolist() == msp.lengths[:2]


# -------------------------------------------------------------------------- corrupt entries

def _entry(i, atoms):
    return {"id": f"x{i}", "atoms": atoms, "scores": {"gdt_ts": 0.5}}


def _make_corrupt(root: Path):
    src = Atom3DLMDB(FIXTURES / "PSR" / "split-by-year" / "data" / "val")[0]
    good = src["atoms"]
    for split in ("train", "val", "test"):
        entries = [_entry(0, good)]
        if split == "train":
            entries += [{"id": "no_scores", "atoms": good},
                        _entry(2, {"columns": ["x"], "index": [0], "data": [[1.0]]}),
                        _entry(3, good)]
        write_atom3d_lmdb(entries, root / "split-by-year" / "data" / split)
    # one entry that is not gzip at all
    env = lmdb.open(str(root / "split-by-year" / "data" / "train"), lock=False)
    with env.begin(write=True) as txn:
        txn.put(b"3", b"not gzip")
    env.close()


def test_corrupt_entries_raise_or_skip(tmp_path):
    root = tmp_path / "psr"
    _make_corrupt(root)
    with pytest.raises(ValueError) as info:
        PSR(root, verbose=False)
    assert "data/train entry 1" in str(info.value) and "scores" in str(info.value)
    ds = PSR(root, on_error="skip", verbose=False)
    assert len(ds) == 3 and ds.num_samples == [1, 1, 1]
    assert [(s, i) for s, i, _ in ds.skipped] == [("train", 1), ("train", 2), ("train", 3)]
    assert "columns" in ds.skipped[1][2] and "gzip" in ds.skipped[2][2]
    tsv = (root / "split-by-year" / "esmgear_fast_cache" / "psr_train.failures.tsv").read_text().splitlines()
    assert [line.split("\t")[1] for line in tsv] == ["1", "2", "3"]
    assert ds.lmdb_keys == [("train", 0), ("val", 0), ("test", 0)]


def test_scores_as_series_and_pickle_refused(tmp_path):
    good = Atom3DLMDB(FIXTURES / "PSR" / "split-by-year" / "data" / "val")[0]["atoms"]
    series = {"name": "x", "index": ["rmsd", "gdt_ts"], "data": [2.0, 0.625]}  # a pandas Series, orient="split"
    for root in ("a", "b"):
        for split in ("train", "val", "test"):
            write_atom3d_lmdb([{"id": "s", "atoms": good, "scores": series}],
                              tmp_path / root / "split-by-year" / "data" / split)
    env = lmdb.open(str(tmp_path / "b" / "split-by-year" / "data" / "val"), lock=False)
    with env.begin(write=True) as txn:
        txn.put(b"serialization_format", b"pkl")
    env.close()
    assert PSR(tmp_path / "a", verbose=False).targets.flatten().tolist() == [0.625] * 3
    with pytest.raises(ValueError, match="pkl"):
        PSR(tmp_path / "b", verbose=False)


def test_parallel_parse_equals_serial(tmp_path):
    shutil.copytree(FIXTURES / "MSP", tmp_path / "MSP")
    a = MSP(tmp_path / "MSP", cache_dir=tmp_path / "c1", verbose=False)
    b = MSP(tmp_path / "MSP", cache_dir=tmp_path / "c2", workers=2, verbose=False)
    assert a.names == b.names and a.lengths == b.lengths
    for i in range(len(a)):
        assert torch.equal(a[i]["mutant"].backbone.nan_to_num(), b[i]["mutant"].backbone.nan_to_num())


def test_transform_applies_to_split_views(psr_dir):
    ds = PSR(psr_dir, verbose=False, transform=lambda s: {**s, "target": s["target"] * 100})
    assert ds[0]["target"].item() == 81.25
    assert ds.split()[2][0]["target"].item() == 37.5


def test_dataloader_workers(psr):
    from esmgear_fast.data.samples import collate_samples

    loader = torch.utils.data.DataLoader(psr, batch_size=2, num_workers=2, collate_fn=collate_samples)
    batches = list(loader)
    assert [b["target"].shape for b in batches] == [(2, 1), (2, 1), (1, 1)]
    assert [n for b in batches for n in b["names"]] == psr.names
    assert torch.equal(torch.cat([b["target"] for b in batches]), psr.targets)


# -------------------------------------------------------------------------- ESM-GearNet's residue rules

def _row(resname, number, atom, element, xyz, chain="A"):
    return ["e", 0, "s", 1, chain, " ", " ", number, "", resname, " ", 1.0, 0.0, *xyz, element, atom, atom, 0]


def test_esm_gearnet_rules_on_a_hand_made_table():
    from esmgear_fast.data.datasets.atom3d import atom_table_to_arrays, atom_table_to_arrays_esm_gearnet

    columns = ["ensemble", "subunit", "structure", "model", "chain", "hetero", "insertion_code", "residue", "segid",
               "resname", "altloc", "occupancy", "bfactor", "x", "y", "z", "element", "name", "fullname",
               "serial_number"]
    rows = [
        _row("ALA", 1, "N", "N", (0.0, 0.0, 0.0)), _row("ALA", 1, "CA", "C", (1.0, 0.0, 0.0)),
        _row("ALA", 1, "C", "C", (2.0, 0.0, 0.0)), _row("ALA", 1, "H", "H", (9.0, 9.0, 9.0)),
        _row("MSE", 2, "N", "N", (3.0, 0.0, 0.0)), _row("MSE", 2, "CA", "C", (4.0, 0.0, 0.0)),
        _row("MSE", 2, "C", "C", (5.0, 0.0, 0.0)), _row("MSE", 2, "SE", "SE", (6.0, 0.0, 0.0)),
        _row("LIG", 3, "CA", "C", (20.0, 0.0, 0.0)),                # ligand atom named CA (carbon)
        _row("CA", 4, "CA", "CA", (30.0, 0.0, 0.0)),                # calcium ion: element not in TorchDrug's vocab
        _row("GLY", 5, "CA", "H", (40.0, 0.0, 0.0)),                # a 'CA' that is a hydrogen: dropped
        _row("HOH", 6, "O", "O", (50.0, 0.0, 0.0)),
    ]
    table = {"columns": columns, "index": list(range(len(rows))), "data": rows}
    esm = atom_table_to_arrays_esm_gearnet(table, "t", "t")
    assert esm["sequence"] == "AGG"                              # MSE and LIG -> glycine
    assert esm["residue_number"].tolist() == [1, 2, 3]
    assert esm["pos"].tolist() == [[1.0, 0.0, 0.0], [4.0, 0.0, 0.0], [20.0, 0.0, 0.0]]
    assert esm["num_skipped_residues"] == 3
    assert bool(np.isnan(esm["backbone"][2, 0]).all())               # the ligand has no N
    ours = atom_table_to_arrays(table, "t", "t")
    assert ours["sequence"] == "AM"                              # MSE -> M; the ligand is not a residue


def test_esm_gearnet_rules_on_fixture(psr_dir):
    ds = PSR(psr_dir, verbose=False, residue_rules="esm_gearnet")
    ours = PSR(psr_dir, verbose=False)
    a, b = ds.split()[1][0]["protein"], ours.split()[1][0]["protein"]   # 1A8O: MSE residues
    mse = {int(line[22:26]) for line in (STRUCTURES / "1A8O.pdb").read_text().splitlines()
           if line.startswith("HETATM") and line[17:20] == "MSE" and line[12:16].strip() == "CA"}
    assert mse and len(a) == len(b)
    expected = "".join("G" if n in mse else c for n, c in zip(b.residue_number.tolist(), b.sequence))
    assert a.sequence == expected and a.sequence != b.sequence
    assert torch.equal(a.pos, b.pos)
    assert len(ds) == len(ours) and torch.equal(ds.targets, ours.targets)
    with pytest.raises(ValueError, match="residue_rules"):
        PSR(psr_dir, residue_rules="torchdrug")
