"""python -m esmgear_fast.pretrain: the run folder, epoch checkpoints and the published-layout export, exact
resume through the engine, fine-tuning (train's init_checkpoint) from our checkpoint and from the export."""
import json
import math

import pytest
import torch

from esmgear_fast.pretrain.__main__ import main

TINY = ["model.esm=random:tiny", "model.hidden_dims=[16,16]", "data.options={max_proteins: 6, min_len: 40}",
        "data.batch_size=3", "train.deterministic=true", "run.progress=false", "pretrain.save_every=1",
        "pretrain.export=esm_gearnet", "train.device=cpu"]


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _last_model(run):
    return torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    straight = root / "straight"
    assert main(TINY + ["task.name=angle", "pretrain.options={num_sample: 16}", "train.epochs=2",
                        f"run.out_dir={straight}"]) == 0
    split = root / "split"
    assert main(TINY + ["task.name=angle", "pretrain.options={num_sample: 16}", "train.epochs=1",
                        f"run.out_dir={split}"]) == 0
    assert main(["--resume", str(split), "train.epochs=2"]) == 0
    return straight, split


def test_run_folder_and_exports(runs):
    straight, _ = runs
    for name in ("config.yaml", "pretrain.yaml", "metrics.jsonl", "summary.json",
                 "checkpoints/last.pt", "checkpoints/best.pt", "checkpoints/epoch_1.pt", "checkpoints/epoch_2.pt",
                 "exports/esm_gearnet_epoch_1.pth", "exports/esm_gearnet_epoch_2.pth"):
        assert (straight / name).is_file(), name
    train = [r for r in _records(straight) if r["split"] == "train"]
    assert len(train) == 2 and all(math.isfinite(r["loss"]) for r in train)

    from esmgear_fast.models import load_esm_gearnet
    exported = torch.load(straight / "exports" / "esm_gearnet_epoch_2.pth", map_location="cpu", weights_only=True)
    assert any(k.startswith("sequence_model.model.layers.0.self_attn.q_proj") for k in exported)
    assert any(k.startswith("structure_model.layers.0.") for k in exported)
    model = load_esm_gearnet(exported, fusion="serial")
    ours = _last_model(straight)
    for k, v in model.structure_model.state_dict().items():
        assert torch.equal(v, ours["model.structure_model." + k]), k


def test_exact_resume(runs):
    straight, split = runs
    a, b = _last_model(straight), _last_model(split)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("source", ["checkpoints/best.pt", "exports/esm_gearnet_epoch_2.pth"])
def test_finetune_from_pretraining(runs, source):
    from esmgear_fast.data import collate_samples
    from esmgear_fast.demo import DemoDataset
    from esmgear_fast.engine.checkpoint import load_init_weights
    from esmgear_fast.models.factory import ModelConfig, build_model
    from esmgear_fast.tasks import TaskConfig, build_task
    straight, _ = runs
    data = DemoDataset().split()[0]
    torch.manual_seed(0)
    model = build_model(ModelConfig(esm="random:tiny", structure="gearnet", hidden_dims=[16, 16]))
    task = build_task(TaskConfig(name="multiclass"), model, data)
    message = load_init_weights(task, straight / source)
    assert "from" in message
    ours = _last_model(straight)
    for k, v in task.model.structure_model.state_dict().items():
        assert torch.equal(v, ours["model.structure_model." + k]), k
    opt = torch.optim.Adam(task.parameter_groups(1e-3))
    out = task(collate_samples([data[i] for i in range(3)]))
    out.loss.backward()
    opt.step()
    assert math.isfinite(out.loss.item())


def test_bad_configs(tmp_path, capsys):
    assert main(TINY + ["task.name=foo", f"run.out_dir={tmp_path / 'x'}"]) == 2
    assert "not a pre-training method" in capsys.readouterr().err
    assert main(TINY + ["task.name=angle", "pretrain.options={mask_rate: 0.1}", f"run.out_dir={tmp_path / 'y'}"]) == 2
    assert "unknown option" in capsys.readouterr().err
    assert main(TINY + ["pretrain.export=torchdrug", f"run.out_dir={tmp_path / 'z'}"]) == 2


def test_pretrain_on_a_structure_folder(tmp_path):
    import shutil
    from esmgear_fast.testing import real_structure_files
    folder = tmp_path / "structures"
    folder.mkdir()
    for f in [f for f in real_structure_files() if f.name.endswith(".pdb.gz")][:4]:
        shutil.copy(f, folder / f.name)
    run = tmp_path / "run"
    assert main(["model.esm=random:tiny", "model.hidden_dims=[16]", "data.dataset=structures", f"data.path={folder}",
                 "data.batch_size=2", "task.name=residue_type", "train.epochs=1", "run.progress=false",
                 "train.device=cpu", f"run.out_dir={run}", "pretrain.export=null"]) == 0
    train = [r for r in _records(run) if r["split"] == "train"]
    assert len(train) == 1 and math.isfinite(train[0]["loss"]) and train[0]["proteins"] == 4
    assert not (run / "exports").exists()


def test_load_pretrain_task_keeps_options(runs):
    from esmgear_fast.pretrain.__main__ import load_pretrain_task
    straight, _ = runs
    task, cfg, psec = load_pretrain_task(straight / "checkpoints" / "best.pt")
    assert type(task).__name__ == "AnglePrediction" and task.num_sample == 16 and psec.export == "esm_gearnet"
    ours = torch.load(straight / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)["model"]
    for k, v in task.state_dict().items():
        assert torch.equal(v, ours[k]), k


def test_engine_load_task_keeps_pretrain_options(runs):
    """embed/predict load every checkpoint through engine.load_task: a pre-training run keeps its options."""
    from esmgear_fast.engine.checkpoint import load_task
    straight, _ = runs
    task, cfg = load_task(straight)          # the run folder: checkpoints/best.pt
    assert type(task).__name__ == "AnglePrediction" and task.num_sample == 16 and not task.training
