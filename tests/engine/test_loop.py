"""Engine options: mixed precision (bf16 autocast, fp16 with a gradient scaler) on CPU, schedulers and
their state in last.pt, max_steps_per_epoch, evaluation of tasks without predictions (pre-training)."""
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

QUICK = ["train.epochs=2", "train.max_steps_per_epoch=2", "train.eval_splits=[valid]"]


def _fit(tmp_path, overrides, task=None):
    torch.manual_seed(0)
    cfg = load_config(overrides=S.BASE + QUICK + list(overrides))
    train, valid, test = S.datasets()
    engine = Engine(cfg, task or S.TinyTask(), train, valid, test, out_dir=tmp_path / "run", dist=DistInfo())
    return engine, engine.fit()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_and_autocasts(tmp_path, precision):
    seen = []
    task = S.TinyTask()
    task.head[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    engine, summary = _fit(tmp_path, [f"train.precision={precision}"], task)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert dtype in seen                                  # the head's Linear ran under autocast
    assert (engine.scaler is not None) == (precision == "fp16")
    ck = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert (ck["scaler"] is not None) == (precision == "fp16")
    assert all(v.dtype == torch.float32 for v in ck["model"].values() if v.is_floating_point())
    assert summary["steps"] == 4 and summary["best_valid"]["loss"] == summary["best_valid"]["loss"]  # not NaN


def test_step_scheduler_and_state_in_checkpoint(tmp_path):
    engine, _ = _fit(tmp_path, ["optim.scheduler=step", "optim.step_size=1", "optim.gamma=0.5", "optim.lr=0.01"])
    assert engine.optimizer.param_groups[0]["lr"] == pytest.approx(0.0025)
    ck = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ck["scheduler"]["last_epoch"] == 2
    lrs = [r["lr"] for r in engine.records if r["split"] == "train"]
    assert lrs == pytest.approx([0.01, 0.005])            # the lr used during each epoch


def test_reduce_on_plateau_follows_selection_metric(tmp_path):
    class Flat(S.TinyTask):           # a validation metric that never improves -> lr drops after patience
        def evaluate(self, preds, targets):
            return {"accuracy": 0.5}
    engine, _ = _fit(tmp_path, ["optim.scheduler=reduce_on_plateau", "optim.patience=0", "optim.factor=0.6",
                                "train.epochs=3"], Flat())
    # epoch 0 sets the best, epochs 1 and 2 do not improve (patience 0): lr x 0.6 twice
    assert engine._lr() == pytest.approx(1e-4 * 0.36)


def test_task_without_predictions_is_evaluated_by_loss(tmp_path):
    class LossOnly(S.TinyTask):       # like a pre-training method: pred None, selection on the loss
        selection_metric = "loss"
        selection_mode = "min"

        def forward(self, inputs):
            out = super().forward(inputs)
            return S.Output(out.loss, None, None, {"extra": out.loss.detach() * 2})
    engine, summary = _fit(tmp_path, [], LossOnly())
    assert set(summary["best_valid"]) == {"loss", "extra"}
    assert summary["best_valid"]["extra"] == pytest.approx(2 * summary["best_valid"]["loss"])
    losses = [r["loss"] for r in engine.records if r["split"] == "valid"]
    assert summary["best_valid"]["loss"] == min(losses)
