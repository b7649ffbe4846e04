"""Task heads on a real (tiny) FusionNetwork: losses against plain formulas, normalisation, evaluation,
the MLP's TorchDrug semantics and the build_task factory."""
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from esmgear_fast.tasks import (MLP, MultiClassification, MultipleBinaryClassification, PropertyPrediction,
                                TaskConfig, TaskOutput, build_task)

from task_helpers import DatasetInfo, StandIn, manual_mlp, tiny_fusion


def test_mlp_torchdrug_names_and_semantics():
    torch.manual_seed(0)
    mlp = MLP(8, [8, 8, 3])
    assert sorted(mlp.state_dict()) == sorted(f"layers.{i}.{p}" for i in range(3) for p in ("weight", "bias"))
    x = torch.randn(5, 8)
    torch.testing.assert_close(mlp(x), manual_mlp(mlp, x))
    single = MLP(8, [1])
    assert sorted(single.state_dict()) == ["layers.0.bias", "layers.0.weight"]
    torch.testing.assert_close(single(x), x @ single.layers[0].weight.T + single.layers[0].bias)
    bn = MLP(8, [8, 8, 3], batch_norm=True)
    assert "batch_norms.1.running_mean" in bn.state_dict() and "batch_norms.2.weight" not in bn.state_dict()


def test_multiple_binary_loss_is_masked_bce(batch):
    model = tiny_fusion()
    task = MultipleBinaryClassification(model, num_tasks=5).eval()
    g = torch.Generator().manual_seed(1)
    target = (torch.rand(4, 5, generator=g) < 0.4).float()
    target[1, 2] = target[3, 0] = float("nan")
    target[:, 4] = float("nan")                 # a label missing for the whole batch contributes 0
    out = task({"protein": batch, "target": target})
    assert isinstance(out, TaskOutput)
    with torch.no_grad():
        z = manual_mlp(task.mlp, model(batch)["graph_feature"]).double()
    torch.testing.assert_close(out.pred.double(), z)
    y = target.double()
    s = torch.sigmoid(z)
    bce = -(y * torch.log(s) + (1 - y) * torch.log(1 - s))
    per_label = []
    for j in range(5):
        keep = ~torch.isnan(y[:, j])
        per_label.append(bce[keep, j].mean() if keep.any() else torch.tensor(0.0, dtype=torch.float64))
    expected = torch.stack(per_label).mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert task.loss({"protein": batch, "target": target}).item() == pytest.approx(out.loss.item(), rel=1e-6)
    assert out.logs["binary cross entropy"].item() == pytest.approx(out.loss.item())
    out.loss.backward()
    assert task.mlp.layers[0].weight.grad is not None
    assert task.model.structure_model.layers[0].linear.weight.grad.abs().sum() > 0
    assert task.selection_metric == "f1_max" and task.selection_mode == "max"
    assert sorted(task.state_dict()) == sorted(["task_indices", "weight"] + [f"mlp.layers.{i}.{p}" for i in range(3)
                                                for p in ("weight", "bias")] + ["model." + k for k in model.state_dict()])


def test_multiple_binary_evaluate_whole_set():
    task = MultipleBinaryClassification(StandIn(), num_tasks=3)
    pred = torch.tensor([[0.9, 0.1, 0.8], [0.2, 0.7, 0.3]])
    target = torch.tensor([[1.0, 0, 0], [0, 1, 1]])
    result = task.evaluate(pred, target)
    assert set(result) == {"auprc@micro", "f1_max"}
    assert result["f1_max"] == pytest.approx(6 / 7)        # hand-computed in tests/test_metrics.py
    # flattened ranking 0.9+ 0.8- 0.7+ 0.3+ 0.2- 0.1-: AP = (1 + 2/3 + 3/4) / 3
    assert result["auprc@micro"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)


def test_property_normalisation_loss_and_predictions(batch):
    model = tiny_fusion(1)
    task = PropertyPrediction(model, num_tasks=1, task_names=["gdt_ts"]).eval()
    values = [0.2, 0.5, 0.9, float("nan"), 0.4, 0.7]
    train = [{"target": torch.tensor([v])} for v in values]
    task.preprocess(train)
    known = np.array([v for v in values if not math.isnan(v)])
    assert task.mean.item() == pytest.approx(known.mean(), rel=1e-6)
    assert task.std.item() == pytest.approx(known.std(ddof=1), rel=1e-6)
    target = torch.tensor([[0.3], [0.8], [float("nan")], [0.6]])
    out = task({"protein": batch, "target": target})
    with torch.no_grad():
        raw = manual_mlp(task.mlp, model(batch)["graph_feature"]).double()
    mean, std = known.mean(), known.std(ddof=1)
    torch.testing.assert_close(out.pred.double(), raw * std + mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(task.predict({"protein": batch}).double(), raw * std + mean, rtol=1e-5, atol=1e-6)
    keep = ~torch.isnan(target[:, 0])
    expected = ((raw[keep, 0] - (target[keep, 0].double() - mean) / std) ** 2).mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)

    plain = PropertyPrediction(model, normalization=False).eval()
    plain.mlp.load_state_dict(task.mlp.state_dict())
    out = plain({"protein": batch, "target": target})
    torch.testing.assert_close(out.pred.double(), raw, rtol=1e-5, atol=1e-6)
    assert out.loss.item() == pytest.approx(((raw[keep, 0] - target[keep, 0].double()) ** 2).mean().item(), rel=1e-5)


def test_property_preprocess_uses_targets_attribute_and_rejects_constant():
    task = PropertyPrediction(StandIn())

    class Targets:
        targets = torch.tensor([[1.0], [2.0], [4.0]])

        def __len__(self):
            return 3

        def __getitem__(self, i):
            raise AssertionError("preprocess must not load structures when targets are available")

    task.preprocess(Targets())
    assert task.mean.item() == pytest.approx(7 / 3) and task.std.item() == pytest.approx(np.std([1, 2, 4], ddof=1))

    class TargetMethod:                    # the datasets' target(i): no structure is loaded either
        def __len__(self):
            return 4

        def target(self, i):
            return torch.tensor([float(i * i)])

        def __getitem__(self, i):
            raise AssertionError("preprocess must not load structures when target(i) is available")

    task.preprocess(TargetMethod())
    assert task.mean.item() == pytest.approx(14 / 4) and task.std.item() == pytest.approx(np.std([0, 1, 4, 9], ddof=1))
    with pytest.raises(ValueError, match="constant"):
        task.preprocess([{"target": torch.tensor([3.0])}] * 4)


def test_property_evaluate_global_metrics():
    task = PropertyPrediction(StandIn(), task_names=["gdt_ts"])
    pred = torch.tensor([[0.1], [0.4], [0.35], [0.8]])
    target = torch.tensor([[0.0], [0.5], [0.3], [1.0]])
    result = task.evaluate(pred, target)
    assert set(result) == {"mae", "rmse", "spearmanr", "pearsonr"}
    assert result["spearmanr"] == pytest.approx(1.0)
    assert result["mae"] == pytest.approx((0.1 + 0.1 + 0.05 + 0.2) / 4)
    assert result["pearsonr"] == pytest.approx(np.corrcoef(pred[:, 0].numpy(), target[:, 0].numpy())[0, 1], rel=1e-6)
    assert task.selection_metric == "spearmanr" and task.selection_mode == "max"
    assert PropertyPrediction(StandIn(), metrics=["mae", "rmse"], selection_metric="rmse").selection_mode == "min"


def test_multiclass_cross_entropy(batch):
    model = tiny_fusion(2)
    task = MultiClassification(model, num_classes=3).eval()
    target = torch.tensor([0, 2, 1, 2])
    out = task({"protein": batch, "target": target})
    with torch.no_grad():
        z = manual_mlp(task.mlp, model(batch)["graph_feature"]).double()
    expected = -(z.log_softmax(-1)[torch.arange(4), target]).mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    result = task.evaluate(out.pred, out.target)
    assert result["accuracy"] == pytest.approx((z.argmax(-1) == target).double().mean().item())
    with pytest.raises(ValueError, match="outside"):
        task({"protein": batch, "target": torch.tensor([0, 3, 1, 2])})


def test_heads_work_with_any_model_of_the_interface(batch):
    task = MultipleBinaryClassification(StandIn(), num_tasks=2)
    out = task({"protein": batch, "target": torch.ones(4, 2)})
    assert out.pred.shape == (4, 2) and torch.isfinite(out.loss)


def test_build_task_from_configs():
    model = StandIn()
    ec = build_task(TaskConfig(name="multiple_binary"), model, DatasetInfo([f"ec{i}" for i in range(7)], "multilabel"))
    assert isinstance(ec, MultipleBinaryClassification) and ec.mlp.layers[-1].out_features == 7
    assert len(ec.mlp.layers) == 3 and ec.metrics == ["auprc@micro", "f1_max"]
    psr = build_task({"name": "property", "metrics": ["spearmanr", "mae"]}, model, DatasetInfo(["gdt_ts"], "regression"))
    assert isinstance(psr, PropertyPrediction) and psr.metrics == ["spearmanr", "mae"] and psr.selection_metric == "spearmanr"
    cfg = OmegaConf.structured(TaskConfig(name="multiclass", num_mlp_layer=2))
    mc = build_task(cfg, model, DatasetInfo(["a", "b", "c"], "multiclass"))
    assert isinstance(mc, MultiClassification) and len(mc.mlp.layers) == 2
    msp = build_task(TaskConfig(name="mutation"), model, DatasetInfo(["label"], "binary"))
    assert len(msp.mlp.layers) == 1 and msp.mlp.layers[0].in_features == 2 * model.output_dim
    with pytest.raises(ValueError, match="task_type"):
        build_task(TaskConfig(name="property"), model, DatasetInfo(["a"], "multilabel"))
    with pytest.raises(ValueError, match="unknown task config keys"):
        build_task({"name": "property", "lr": 1.0}, model, DatasetInfo(["a"], "regression"))
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        build_task(TaskConfig(name="nope"), model, DatasetInfo(["a"], "regression"))
    with pytest.raises(ValueError, match="unknown metric"):
        build_task(TaskConfig(metrics=["f1max"]), model, DatasetInfo(["a"], "multilabel"))
    with pytest.raises(ValueError, match="selection metric"):
        build_task(TaskConfig(metrics=["f1_max"], selection_metric="auroc"), model, DatasetInfo(["a"], "multilabel"))


def test_build_task_delegates_pretraining_methods():
    from esmgear_fast.pretrain import ResidueTypePrediction
    task = build_task(TaskConfig(name="residue_type"), tiny_fusion(), DatasetInfo([], "unlabelled"))
    assert isinstance(task, ResidueTypePrediction)
