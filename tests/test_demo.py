"""The built-in demo: its data (real chains, DSSP labels, honest split) and `python -m esmgear_fast.train` end to end."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from esmgear_fast.demo import DEMO_DATA, DemoDataset, demo_dataset, demo_report

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def raw():
    with np.load(DEMO_DATA, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_interface_and_items():
    ds = demo_dataset()
    assert ds.task_type == "multiclass"
    assert ds.tasks == ["mainly_alpha", "mainly_beta", "alpha_beta"]
    assert len(ds) == len(ds.names) == len(ds.lengths) == len(ds.targets) > 300
    item = ds[5]
    p = item["protein"]
    assert item["target"].dtype == torch.int64 and item["target"].dim() == 0
    assert len(p) == int(ds.lengths[5]) and p.pos.shape == (len(p), 3) and p.backbone.shape == (len(p), 4, 3)
    assert torch.equal(p.pos, p.backbone[:, 1])
    assert int(item["target"]) == int(ds.targets[5])
    with pytest.raises(IndexError):
        ds[len(ds)]
    with pytest.raises(FileNotFoundError, match="demo data not found"):
        DemoDataset("/nonexistent/demo.npz")


def test_chains_are_the_real_fixture_chains():
    """Every demo chain is the real chain of the test fixture with the same name (coordinates to 1 mA)."""
    from esmgear_fast.testing import real_proteins
    fixture = {p.name: p for p in real_proteins()}
    ds = DemoDataset()
    for i in range(0, len(ds), 7):
        p = ds.protein(i)
        ref = fixture[p.name]
        assert p.sequence == ref.sequence
        assert torch.allclose(p.pos, ref.pos, atol=1.5e-3)
        assert torch.allclose(torch.nan_to_num(p.backbone, 0.0), torch.nan_to_num(ref.backbone, 0.0), atol=1.5e-3)
        assert torch.equal(p.residue_number, ref.residue_number)


def test_labels_follow_the_dssp_states(raw):
    """The class of each chain is re-derived here from the stored per-residue DSSP states."""
    ptr = np.concatenate([[0], np.cumsum(raw["lengths"].astype(np.int64))])
    states = raw["dssp"].tobytes().decode("ascii")
    classes = [str(c) for c in raw["classes"]]
    for i, (s, e) in enumerate(zip(ptr[:-1], ptr[1:])):
        ss = states[s:e]
        h = sum(c in "HGI" for c in ss) / len(ss)
        b = sum(c in "EB" for c in ss) / len(ss)
        expected = "alpha_beta" if (h >= 0.2 and b >= 0.15) else ("mainly_alpha" if h > b else "mainly_beta")
        assert classes[int(raw["labels"][i])] == expected, raw["names"][i]
        assert abs(float(raw["helix_fraction"][i]) - h) < 1e-6
    # all three classes occur in every split
    for k in range(3):
        assert set(raw["labels"][raw["split"] == k].tolist()) == {0, 1, 2}


def test_split_holds_out_related_chains():
    train, valid, test = DemoDataset().split()
    assert len(train) > len(valid) > 0 and len(test) > 0
    groups = [set(d.groups.tolist()) for d in (train, valid, test)]
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])

    def kmers(seq):
        return {seq[i:i + 3] for i in range(len(seq) - 2)}
    train_seqs = [kmers(train.protein(i).sequence) for i in range(len(train))]
    for d in (valid, test):
        for i in range(len(d)):
            q = kmers(d.protein(i).sequence)
            best = max(len(q & t) / len(q | t) for t in train_seqs)
            assert best < 0.2, f"{d.names[i]} shares {best:.2f} of its 3-mers with a training chain"
    sources = {s.split(":", 1)[1] for s in train.sources}
    for d in (valid, test):
        assert not sources & {s.split(":", 1)[1] for s in d.sources}


def test_majority_baseline():
    train, _, test = DemoDataset().split()
    counts = np.bincount(test.targets.numpy(), minlength=3)
    name, acc = test.majority_baseline()
    assert name == test.tasks[int(counts.argmax())] and acc == pytest.approx(counts.max() / counts.sum())
    name_tr, acc_tr = test.majority_baseline(train)
    assert acc_tr <= acc


def test_subset_and_max_length():
    ds = DemoDataset(max_length=200)
    assert int(ds.lengths.max()) <= 200 and 0 < len(ds) < len(DemoDataset())
    sub = ds.subset([2, 0])
    assert sub.names == [ds.names[2], ds.names[0]]
    with pytest.raises(ValueError):
        DemoDataset(max_length=0)


def test_demo_trains_end_to_end(tmp_path):
    """`python -m esmgear_fast.train` (the demo config, 2 epochs instead of 3) beats the majority baseline."""
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "esmgear_fast.train", f"run.out_dir={out}", "train.epochs=2",
                           "optim.lr=2e-3"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "config.yaml").is_file() and (out / "checkpoints" / "best.pt").is_file()
    summary = json.loads((out / "summary.json").read_text())
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["epoch"] for r in lines if r["split"] == "test"} == {0, 1}
    _, baseline = DemoDataset().split()[2].majority_baseline()
    accuracy = summary["best_test"]["accuracy"]
    assert accuracy > baseline + 0.15, (accuracy, baseline)

    report = demo_report(out).splitlines()
    assert len(report) == 1 + 2 + 1                       # header, one row per epoch, the verdict
    test_rows = {r["epoch"]: r["accuracy"] for r in lines if r["split"] == "test"}
    assert float(report[2].split()[4]) == pytest.approx(test_rows[1], abs=1e-4)
    assert f"{accuracy:.3f}" in report[-1] and f"baseline {baseline:.3f}" in report[-1]
