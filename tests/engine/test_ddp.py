"""DDP on CPU: ``torchrun --standalone --nproc_per_node=2 -m esmgear_fast.train`` with gloo, on the EC fixture
(real chains) with a tiny ESM-GearNet (whose ESM language-model head gets no gradient, as in fine-tuning).

Checks that both ranks hold identical parameters after every optimizer step (each rank writes a checksum
in debug mode), that the run folder has the same files as a single-process run, and that the test metrics
gathered across ranks equal a single-process evaluation of the saved weights (rank 1 has no test batch:
it joins the gather with nothing).
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
EC_FIXTURE = ROOT / "tests" / "data" / "fixtures" / "deepfri" / "EnzymeCommission"


def _files(root: Path):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "debug" not in p.parts)


def test_torchrun_two_process_gloo(tmp_path):
    from esmgear_fast.data.samples import collate_samples
    from esmgear_fast.engine.checkpoint import load_task
    from esmgear_fast.engine.config import load_config
    from esmgear_fast.train import build_datasets, main

    data = tmp_path / "EC"
    shutil.copytree(EC_FIXTURE, data)
    cfg = {
        "data": {"dataset": "EnzymeCommission", "path": str(data), "options": {"workers": 1, "progress": False},
                 "transforms": {"truncate": 100}, "batch_size": 1, "eval_batch_size": 2},
        "model": {"esm": "random:tiny", "structure": "gearnet", "hidden_dims": [16, 16]},
        "task": {"name": "multiple_binary", "num_mlp_layer": 2},
        "optim": {"lr": 1e-3},
        # 7 training chains, 1 per rank per micro-batch: 3 micro-batches per rank, accumulation 4 / (2 x 1) = 2
        # -> optimizer steps after micro-batches 2 (the first one under no_sync) and 3 (a partial group)
        "train": {"epochs": 1, "effective_batch_size": 4, "log_every": 1},
        "run": {"progress": False, "tensorboard": False, "debug_checksums": True},
    }
    path = tmp_path / "ec.yaml"
    path.write_text(yaml.safe_dump(cfg))

    single = tmp_path / "single"                 # also builds the dataset cache before the two ranks start
    assert main(["--config", str(path), f"run.out_dir={single}"]) == 0

    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "esmgear_fast.train", "--config", str(path), f"run.out_dir={out}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]

    r0 = (out / "debug" / "checksums-rank0.txt").read_text().splitlines()
    r1 = (out / "debug" / "checksums-rank1.txt").read_text().splitlines()
    assert r0 == r1 and [x.split()[0] for x in r0] == ["1", "2"]
    assert _files(out) == _files(single)

    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    summary = json.loads((out / "summary.json").read_text())
    task, _ = load_task(out / "checkpoints" / "last.pt")
    _, _, test = build_datasets(load_config(path))
    inputs = collate_samples([test[i] for i in range(len(test))])
    assert len(test) == 2                          # one evaluation batch of 2: rank 1 evaluates nothing
    with torch.no_grad():
        metrics = task.evaluate(task.predict(inputs), inputs["target"])
    for k in ("f1_max", "auprc@micro"):
        assert metrics[k] == pytest.approx(summary["last_test"][k], abs=1e-6), k
