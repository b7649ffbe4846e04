"""``python -m esmgear_fast.train``: config handling, an end-to-end EC run on the DeepFRI-layout fixture (real
chains) with a tiny ESM-GearNet, best.pt usable through ``load_task``, ``--resume``, and bad inputs."""
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from esmgear_fast.train import default_config_path, main

HERE = Path(__file__).resolve().parent
EC_FIXTURE = HERE / "data" / "fixtures" / "deepfri" / "EnzymeCommission"


def test_print_config_and_overrides(capsys):
    assert main(["--print-config", "optim.lr=0.5", "train.precision=bf16"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["optim"]["lr"] == 0.5 and out["train"]["precision"] == "bf16"
    assert out["data"]["dataset"] == "demo"        # no --config: the built-in demo
    assert default_config_path() is not None


def test_unknown_key_exits_with_the_valid_keys(capsys):
    assert main(["--print-config", "train.epoch=3"]) == 2
    err = capsys.readouterr().err
    assert "train.epoch" in err and "train.epochs" in err and "train.precision" in err


def _ec_config(tmp_path) -> Path:
    data = tmp_path / "EC"
    shutil.copytree(EC_FIXTURE, data)
    cfg = {
        "data": {"dataset": "EnzymeCommission", "path": str(data), "options": {"workers": 1, "progress": False},
                 "transforms": {"truncate": 120}, "batch_size": 2},
        "model": {"esm": "random:tiny", "structure": "gearnet", "fusion": "serial", "hidden_dims": [16, 16]},
        "task": {"name": "multiple_binary", "num_mlp_layer": 2},
        "optim": {"lr": 1e-3, "scheduler": "reduce_on_plateau"},
        "train": {"epochs": 2, "effective_batch_size": 4, "checkpoint_every_steps": 1, "log_every": 1,
                  "seed": 1},
        "run": {"progress": False, "tensorboard": True},
    }
    path = tmp_path / "ec_tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def ec_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ec")
    cfg = _ec_config(tmp)
    out = tmp / "run"
    torch.manual_seed(0)
    assert main(["--config", str(cfg), f"run.out_dir={out}"]) == 0
    return cfg, out


def test_ec_run_folder(ec_run):
    _, out = ec_run
    for f in ("config.yaml", "metrics.jsonl", "summary.json", "curves.png", "checkpoints/last.pt",
              "checkpoints/best.pt"):
        assert (out / f).is_file(), f
    assert list((out / "tensorboard").iterdir())
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["split"]) for r in records] == [(0, "train"), (0, "valid"), (0, "test"),
                                                           (1, "train"), (1, "valid"), (1, "test")]
    train = records[3]
    assert train["proteins"] == 7 and train["proteins_per_s"] > 0 and train["peak_memory_mb"] > 0
    assert "f1_max" in records[1] and "lr" in train
    summary = json.loads((out / "summary.json").read_text())
    assert summary["selection_metric"] == "f1_max" and summary["best_epoch"] in (0, 1)
    best_valid = [r for r in records if r["split"] == "valid" and r["epoch"] == summary["best_epoch"]][0]
    assert summary["best_valid"]["f1_max"] == best_valid["f1_max"]
    assert summary["last_test"]["f1_max"] == records[5]["f1_max"]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["run"]["out_dir"] == str(out) and saved["data"]["transforms"]["truncate"] == 120


def test_best_checkpoint_reproduces_its_test_metrics_via_load_task(ec_run):
    from esmgear_fast.data.samples import collate_samples
    from esmgear_fast.engine.checkpoint import load_task
    from esmgear_fast.engine.config import load_config
    from esmgear_fast.train import build_datasets
    _, out = ec_run
    task, cfg = load_task(out)                       # a run folder -> checkpoints/best.pt
    assert not task.training
    summary = json.loads((out / "summary.json").read_text())
    _, _, test = build_datasets(load_config(out / "config.yaml"))
    inputs = collate_samples([test[i] for i in range(len(test))])
    with torch.no_grad():
        pred = task.predict(inputs)
    metrics = task.evaluate(pred, inputs["target"])
    assert metrics["f1_max"] == pytest.approx(summary["best_test"]["f1_max"], abs=1e-6)


def test_resume_cli_continues_the_run(ec_run, tmp_path):
    _, out = ec_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    before = json.loads((copy / "summary.json").read_text())
    assert main(["--resume", str(copy), "train.epochs=3"]) == 0
    after = json.loads((copy / "summary.json").read_text())
    assert after["last_epoch"] == 2 and after["steps"] > before["steps"]
    records = [json.loads(x) for x in (copy / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 9 and records[:6] == [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_existing_run_folder_needs_resume(ec_run, capsys):
    cfg, out = ec_run
    assert main(["--config", str(cfg), f"run.out_dir={out}"]) == 1
    assert "--resume" in capsys.readouterr().err


def test_missing_dataset_says_where_to_get_it(tmp_path, capsys, ec_run):
    cfg, _ = ec_run
    rc = main(["--config", str(cfg), f"data.path={tmp_path / 'nowhere'}", f"run.out_dir={tmp_path / 'r'}"])
    err = capsys.readouterr().err
    assert rc == 1 and "nowhere" in err and "Download it from" in err and "http" in err


def test_bad_init_checkpoint(tmp_path, capsys, ec_run):
    cfg, _ = ec_run
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00garbage")
    rc = main(["--config", str(cfg), f"run.init_checkpoint={bad}", f"run.out_dir={tmp_path / 'r'}"])
    assert rc == 1 and "bad.pth is not a readable" in capsys.readouterr().err
    rc = main(["--config", str(cfg), f"run.init_checkpoint={tmp_path / 'none.pt'}", f"run.out_dir={tmp_path / 'r2'}"])
    assert rc == 1 and "none.pt" in capsys.readouterr().err


def test_resume_without_run_folder(tmp_path, capsys):
    assert main(["--resume", str(tmp_path)]) == 2
    assert "no config.yaml" in capsys.readouterr().err


def test_labels_not_matching_structures(tmp_path, capsys):
    folder = tmp_path / "pdbs"
    folder.mkdir()
    for f in ("1TRM_A.pdb.gz", "pdb1ejg.pdb.gz"):
        shutil.copy(HERE / "data" / "structures" / f, folder / f)
    labels = tmp_path / "labels.csv"
    labels.write_text("name,split,label\n1TRM_A,train,a\npdb1ejg,valid,b\n9XYZ,test,a\n")
    rc = main(["data.dataset=structures", f"data.path={folder}", f"data.labels={labels}", "data.options={}",
               "task.name=multiclass", "model.esm=random:tiny", "model.hidden_dims=[8]",
               f"run.out_dir={tmp_path / 'r'}"])
    err = capsys.readouterr().err
    assert rc == 1 and "9XYZ" in err and "labels.csv" in err, err
