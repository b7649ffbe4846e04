"""Bad inputs stop the engine with errors that name the problem: NaN loss (step + proteins, no NaN
checkpoint), out of memory on a long protein (names it, suggests max_residues), batch sizes that do not fit
the world size, and checkpoints that do not fit the model."""
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import engine_standin as S  # noqa: E402

from esmgear_fast.engine.checkpoint import (CheckpointError, atomic_save, load_checkpoint,  # noqa: E402
                                            load_init_weights)
from esmgear_fast.engine.config import load_config  # noqa: E402
from esmgear_fast.engine.distributed import DistInfo  # noqa: E402
from esmgear_fast.engine.loop import BatchOutOfMemoryError, Engine, NonFiniteLossError  # noqa: E402


def _engine(tmp_path, task, overrides=(), data=None, dist=None):
    torch.manual_seed(0)
    cfg = load_config(overrides=S.BASE + list(overrides))
    train, valid, test = data or S.datasets()
    return Engine(cfg, task, train, valid, test, out_dir=tmp_path / "run", dist=dist or DistInfo())


def test_nan_loss_stops_with_step_and_proteins_and_keeps_best(tmp_path):
    # 6 training batches per epoch: call 8 is the 2nd batch of epoch 1 (best.pt exists from epoch 0)
    task = S.TinyTask(nan_at_call=8)
    engine = _engine(tmp_path, task, ["train.epochs=3", "train.checkpoint_every_steps=1"])
    with pytest.raises(NonFiniteLossError) as e:
        engine.fit()
    msg = str(e.value)
    bad_names = task.names_seen[7]
    assert "epoch 1" in msg and "optimizer step 8" in msg and "nan" in msg
    assert all(n in msg for n in bad_names), (bad_names, msg)
    assert "optim.lr" in msg and "grad_clip" in msg
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert best["epoch"] == 0 and last["step"] == 7          # the last good step; nothing after the NaN
    for ck in (best, last):
        assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_nan_target_names_that_protein(tmp_path):
    train, valid, test = S.datasets(nan_at=5)
    engine = _engine(tmp_path, S.TinyTask(), ["train.epochs=1"], data=(train, valid, test))
    with pytest.raises(NonFiniteLossError, match=train.names[5]):
        engine.fit()
    assert not (tmp_path / "run" / "checkpoints" / "best.pt").exists()


def test_out_of_memory_names_protein_and_suggests_max_residues(tmp_path):
    train, valid, test = S.datasets()
    longest = max(range(len(valid)), key=lambda i: valid.lengths[i])
    # training windows are 40 residues; evaluation sees whole proteins: the longest valid one "does not fit"
    engine = _engine(tmp_path, S.TinyTask(oom_above=valid.lengths[longest] - 1), ["train.epochs=1"],
                     data=(train, valid, test))
    with pytest.raises(BatchOutOfMemoryError) as e:
        engine.fit()
    msg = str(e.value)
    assert f"{valid.names[longest]} ({valid.lengths[longest]} residues)" in msg
    assert "data.max_residues" in msg and "valid" in msg


def test_effective_batch_smaller_than_world(tmp_path):
    fake = DistInfo(rank=0, world_size=4)
    with pytest.raises(ValueError, match=r"smaller than world size x data.batch_size = 4 x 2 = 8"):
        _engine(tmp_path, S.TinyTask(), ["train.effective_batch_size=4"], dist=fake)
    with pytest.raises(ValueError, match="not a multiple"):
        _engine(tmp_path, S.TinyTask(), ["train.effective_batch_size=12"], dist=fake)
    with pytest.raises(ValueError, match="max_residues"):
        _engine(tmp_path, S.TinyTask(), ["train.effective_batch_size=8", "data.max_residues=500"])


def test_fewer_batches_than_processes(tmp_path):
    train, valid, test = S.datasets()
    engine = _engine(tmp_path, S.TinyTask(), ["data.batch_size=8"], data=(train.subset([0, 1, 2]), valid, test))
    engine.dist = DistInfo(rank=0, world_size=2)
    with pytest.raises(ValueError, match=r"gives 1 batch\(es\) per epoch, fewer than the 2 processes"):
        engine.train_batches(0)


class _NullLogger:
    def scalars(self, *a, **k):
        pass


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    """4 accumulated micro-batches of 2 == one batch of 8 (same 8 proteins, no dropout / BatchNorm, SGD)."""
    train, valid, test = S.datasets()
    train.window = None
    start = S.TinyTask(batch_norm=False)
    states = []
    for overrides in (["data.batch_size=2", "train.effective_batch_size=8"], ["data.batch_size=8"]):
        task = S.TinyTask(batch_norm=False)
        task.load_state_dict(start.state_dict())
        task.head[2].p = 0.0
        e = _engine(tmp_path, task, overrides + ["train.epochs=1", "train.max_steps_per_epoch=1",
                                                  "optim.optimizer=sgd", "optim.lr=0.1"],
                    data=(train, valid, test))
        e._logger = _NullLogger()
        e.train_epoch()
        assert e.step == 1
        states.append({k: v.detach().clone() for k, v in task.state_dict().items()})
    changed = [k for k in states[0] if not torch.equal(states[0][k], start.state_dict()[k])]
    assert changed                                            # the step did something
    for k in states[0]:
        torch.testing.assert_close(states[0][k], states[1][k], rtol=1e-5, atol=1e-6, msg=k)


def test_init_checkpoint_architecture_mismatch_names_keys(tmp_path):
    small, big = S.TinyTask(hidden=8), S.TinyTask(hidden=16)
    path = tmp_path / "small.pt"
    atomic_save({"format": "esmgear_fast.checkpoint", "version": 1, "config": {}, "model": small.state_dict()}, path)
    with pytest.raises(CheckpointError) as e:
        load_init_weights(big, path)
    msg = str(e.value)
    assert "batch_norms.1.weight (8,) vs model (16,)" in msg and "other shapes" in msg and "hidden_dims" in msg
    # the matching architecture loads, encoder only (the head keeps its own weights)
    other = S.TinyTask(hidden=8)
    head_before = other.head[0].weight.clone()
    assert "encoder" in load_init_weights(other, path)
    assert torch.equal(other.model.layers[0].linear.weight, small.model.layers[0].linear.weight)
    assert torch.equal(other.head[0].weight, head_before)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt is not a readable"):
        load_init_weights(other, garbage)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_init_weights(other, tmp_path / "missing.pt")
