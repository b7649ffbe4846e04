"""Parameter groups (ESM at lr * ratio, 0 freezes it) and strict loading of TorchDrug-layout task state dicts."""
import pytest
import torch

from esmgear_fast.models.factory import to_esm_gearnet_state_dict
from esmgear_fast.tasks import MultipleBinaryClassification, MutationStability, PropertyPrediction

from task_helpers import tiny_fusion


def test_parameter_groups_lr_ratio(batch):
    task = MultipleBinaryClassification(tiny_fusion(), num_tasks=3)
    groups = task.parameter_groups(1e-3, 0.1, weight_decay=0.01)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"sequence_model", "structure_model", "head"}
    assert by_name["sequence_model"]["lr"] == pytest.approx(1e-4)
    assert by_name["structure_model"]["lr"] == by_name["head"]["lr"] == 1e-3
    assert all(g["weight_decay"] == 0.01 for g in groups)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(task.parameters()))
    assert {id(p) for p in by_name["sequence_model"]["params"]} == {id(p) for p in task.model.sequence_model.parameters()}
    assert {id(p) for p in by_name["head"]["params"]} == {id(p) for p in task.mlp.parameters()}


def test_ratio_zero_freezes_the_sequence_model(batch):
    task = MultipleBinaryClassification(tiny_fusion(), num_tasks=3)
    groups = task.parameter_groups(1e-2, 0.0)
    assert [g["name"] for g in groups] == ["structure_model", "head"]
    esm = list(task.model.sequence_model.parameters())
    assert all(not p.requires_grad for p in esm)
    before = [p.detach().clone() for p in esm]
    struct_before = task.model.structure_model.layers[0].linear.weight.detach().clone()
    opt = torch.optim.Adam(groups)
    loss = task({"protein": batch, "target": torch.tensor([[1.0, 0, 1]] * 4)}).loss
    loss.backward()
    assert all(p.grad is None for p in esm)
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, esm))
    assert not torch.equal(struct_before, task.model.structure_model.layers[0].linear.weight)


def _torchdrug_task_state(model, head):
    """A TorchDrug task.state_dict(): the published FusionNetwork layout under model.*, plus the head."""
    state = {"model." + k: v.clone() for k, v in to_esm_gearnet_state_dict(model).items()}
    state.update(head)
    return state


def test_strict_load_torchdrug_layout_multiple_binary(batch):
    source = tiny_fusion(5)
    d = source.output_dim
    g = torch.Generator().manual_seed(0)
    head = {"mlp.layers.0.weight": torch.randn(d, d, generator=g), "mlp.layers.0.bias": torch.randn(d, generator=g),
            "mlp.layers.1.weight": torch.randn(d, d, generator=g), "mlp.layers.1.bias": torch.randn(d, generator=g),
            "mlp.layers.2.weight": torch.randn(4, d, generator=g), "mlp.layers.2.bias": torch.randn(4, generator=g),
            "task_indices": torch.arange(4), "weight": torch.ones(4)}
    task = MultipleBinaryClassification(tiny_fusion(6), num_tasks=4).eval()
    task.load_torchdrug_state_dict({"model": _torchdrug_task_state(source, head)})
    for k, v in head.items():
        torch.testing.assert_close(task.state_dict()[k], v)
    for k, v in source.state_dict().items():
        torch.testing.assert_close(task.model.state_dict()[k], v)
    with torch.no_grad():
        torch.testing.assert_close(task.predict({"protein": batch}), task.mlp(source(batch)["graph_feature"]))
    # our own layout (model.* in our names + the same head keys) loads strictly too
    ours = {**{"model." + k: v for k, v in source.state_dict().items()}, **head}
    MultipleBinaryClassification(tiny_fusion(7), num_tasks=4).load_state_dict(ours, strict=True)
    with pytest.raises(RuntimeError, match="size mismatch"):
        MultipleBinaryClassification(tiny_fusion(7), num_tasks=5).load_state_dict(ours, strict=True)


def test_strict_load_torchdrug_layout_property(batch):
    source = tiny_fusion(8)
    d = source.output_dim
    head = {f"mlp.layers.{i}.{p}": torch.randn(*((d if i < 2 else 1, d) if p == "weight" else (d if i < 2 else 1,)))
            for i in range(3) for p in ("weight", "bias")}
    head.update({"mean": torch.tensor([0.45]), "std": torch.tensor([0.2]), "weight": torch.ones(1)})
    task = PropertyPrediction(tiny_fusion(9)).eval()
    task.load_torchdrug_state_dict(_torchdrug_task_state(source, head))
    with torch.no_grad():
        raw = task.mlp(source(batch)["graph_feature"])
        torch.testing.assert_close(task.predict({"protein": batch}), raw * 0.2 + 0.45)


def test_strict_load_torchdrug_layout_msp_with_tied_model2():
    source = tiny_fusion(10)
    d = source.output_dim
    head = {"mlp.layers.0.weight": torch.randn(1, 2 * d), "mlp.layers.0.bias": torch.randn(1), "weight": torch.ones(1)}
    state = _torchdrug_task_state(source, head)
    state.update({"model2." + k[len("model."):]: v for k, v in list(state.items()) if k.startswith("model.")})
    task = MutationStability(tiny_fusion(11))
    task.load_torchdrug_state_dict(state)
    torch.testing.assert_close(task.mlp.layers[0].weight, head["mlp.layers.0.weight"])
    assert not any(k.startswith("model2.") for k in task.state_dict())
    # our-layout state dict with a tied model2 copy (what torch saves for a shared submodule) loads strictly
    ours = {**{"model." + k: v for k, v in source.state_dict().items()}, **head}
    ours.update({"model2." + k: v for k, v in source.state_dict().items()})
    MutationStability(tiny_fusion(12)).load_state_dict(ours, strict=True)
    key = next(k for k in ours if k.startswith("model2.") and ours[k].is_floating_point())
    ours[key] = ours[key] + 1
    with pytest.raises(RuntimeError, match="model2 must equal model"):
        MutationStability(tiny_fusion(12)).load_state_dict(ours, strict=True)
    broken = dict(state)
    k2 = next(k for k in broken if k.startswith("model2.") and broken[k].is_floating_point())
    broken[k2] = broken[k2] + 1
    with pytest.raises(ValueError, match="not a copy"):
        MutationStability(tiny_fusion(13)).load_torchdrug_state_dict(broken)
