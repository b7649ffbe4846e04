"""DDP on CPU: 2 processes with gloo under torchrun --standalone.

Checks that both ranks hold identical parameters after every optimizer step (each rank writes a checksum
in debug mode), that the evaluation metrics gathered across ranks equal a single-process evaluation of
the same weights, and that the run folder has the same files as a single-process run.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import engine_standin as S  # noqa: E402

from esmgear_fast.engine.checkpoint import load_checkpoint  # noqa: E402
from esmgear_fast.engine.config import load_config  # noqa: E402
from esmgear_fast.engine.distributed import DistInfo  # noqa: E402
from esmgear_fast.engine.loop import Engine  # noqa: E402

# eval_batch_size=4: the 4-item valid/test sets are one batch, so rank 1 evaluates nothing and joins the
# gather with an empty tensor
ARGS = ["train.epochs=1", "data.batch_size=2", "train.effective_batch_size=8", "run.debug_checksums=true",
        "data.eval_batch_size=4"]


def _files(root: Path):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "debug" not in p.parts)


def test_two_process_gloo_run(tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent.parent)] + env.get("PYTHONPATH", "").split(os.pathsep))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "engine_standin.py"), str(out)] + ARGS
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]

    # identical parameters on both ranks after every step (12 items / (2 ranks x 2) = 3 micro-batches per
    # rank, accumulation 8 / (2 x 2) = 2 -> 2 optimizer steps: a full group (no_sync on its first
    # micro-batch) and a partial one)
    r0 = (out / "debug" / "checksums-rank0.txt").read_text().split("\n")
    r1 = (out / "debug" / "checksums-rank1.txt").read_text().split("\n")
    assert r0 == r1 and len([x for x in r0 if x]) == 2

    # only rank 0 wrote; the same files as a single-process run
    single = tmp_path / "single"
    S.main([str(single)] + ARGS)
    assert _files(out) == _files(single)
    assert "checkpoints/last.pt" in _files(out) and "summary.json" in _files(out)

    # gathered evaluation == single-process evaluation of the DDP run's final weights
    summary = json.loads((out / "summary.json").read_text())
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    task = S.TinyTask()
    task.load_state_dict(ckpt["model"])
    cfg = load_config(overrides=S.BASE + ARGS)
    train, valid, test = S.datasets()
    engine = Engine(cfg, task, train, valid, test, out_dir=tmp_path / "eval", dist=DistInfo())
    metrics = engine.evaluate(test, "test")
    for k in ("accuracy", "bce"):
        assert metrics[k] == pytest.approx(summary["last_test"][k], rel=1e-6, abs=1e-7), k
