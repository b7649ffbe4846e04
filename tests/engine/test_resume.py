"""Exact resume: a run killed with SIGKILL mid-epoch and resumed ends with the same summary.json metrics,
bit for bit, as the uninterrupted run (deterministic mode, CPU), with DataLoader workers and random
per-sample transforms (the stand-in's training items are random 40-residue windows)."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import engine_standin as S  # noqa: E402

from esmgear_fast.engine.checkpoint import load_checkpoint  # noqa: E402

ARGS = ["train.epochs=2", "train.checkpoint_every_steps=2", "data.num_workers=1",
        "train.effective_batch_size=4"]   # 2 micro-batches per optimizer step: 3 steps per epoch


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent.parent)] + env.get("PYTHONPATH", "").split(os.pathsep))
    return env


def _run_inprocess(out, extra=()):
    S.main([str(out)] + ARGS + list(extra))
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """The uninterrupted run (shared by the tests)."""
    out = tmp_path_factory.mktemp("fresh") / "run"
    return out, _run_inprocess(out)


def test_kill9_mid_epoch_then_resume_is_exact(tmp_path, fresh):
    killed = tmp_path / "killed"
    # 3 optimizer steps per epoch; checkpoints after steps 2 and 4 (mid-epoch) and at epoch ends. Killed
    # after step 5 (mid-epoch 1): the resumed run replays step 5 from the step-4 checkpoint.
    env = _env()
    env["ESMGEAR_FAST_TEST_KILL_AFTER_STEP"] = "5"
    proc = subprocess.run([sys.executable, str(HERE / "engine_standin.py"), str(killed)] + ARGS, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not (killed / "summary.json").exists() or json.loads((killed / "summary.json").read_text())["last_epoch"] == 0
    ckpt = load_checkpoint(killed / "checkpoints" / "last.pt")
    assert (ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["step"]) == (1, 2, 4)
    assert not list((killed / "checkpoints").glob("*.tmp"))

    resumed = _run_inprocess(killed, ["run.resume=true"])
    fresh_dir, fresh = fresh
    assert resumed["steps"] == fresh["steps"] == 6
    for key in ("best_epoch", "best_valid", "best_test", "last_train", "last_valid", "last_test"):
        assert resumed[key] == fresh[key], key
    # the per-epoch records too (metrics.jsonl has one line per split and epoch, no duplicates)
    lines = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    fresh_lines = [json.loads(x) for x in (fresh_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["split"]) for r in lines] == [(r["epoch"], r["split"]) for r in fresh_lines]
    assert [r["loss"] for r in lines] == [r["loss"] for r in fresh_lines]
    a = load_checkpoint(killed / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(fresh_dir / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_external_kill9_at_a_random_moment_then_resume_is_exact(tmp_path, fresh):
    """kill -9 from outside at a random moment after the first checkpoint exists (possibly while a
    checkpoint is being written); resumed with a different number of DataLoader workers."""
    import random
    import time
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(HERE / "engine_standin.py"), str(killed)] + ARGS,
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not (killed / "checkpoints" / "last.pt").exists():
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() < deadline
            time.sleep(0.02)
        time.sleep(random.uniform(0.0, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    load_checkpoint(killed / "checkpoints" / "last.pt")          # never half-written
    resumed = _run_inprocess(killed, ["run.resume=true", "data.num_workers=0"])
    fresh = fresh[1]
    for key in ("best_epoch", "best_valid", "best_test", "last_train", "last_test"):
        assert resumed[key] == fresh[key], key


def test_resume_of_finished_run_changes_nothing(tmp_path):
    out = tmp_path / "run"
    first = _run_inprocess(out, ["train.epochs=1", "train.checkpoint_every_steps=0"])
    again = _run_inprocess(out, ["train.epochs=1", "train.checkpoint_every_steps=0", "run.resume=true"])
    assert first == again
