"""The heads driven by the training engine: one epoch of PSR-style regression with a frozen ESM, the
run's checkpoint rebuilt by ``load_task`` (build_task + strict load) and predicting the same values."""
import torch

from esmgear_fast.data.samples import collate_samples
from esmgear_fast.engine.checkpoint import load_task
from esmgear_fast.engine.config import load_config
from esmgear_fast.engine.loop import Engine, seed_everything
from esmgear_fast.models.factory import build_model
from esmgear_fast.tasks import PropertyPrediction, build_task
from esmgear_fast.testing import real_proteins


class Regression(torch.utils.data.Dataset):
    """Real chains; target = fraction of hydrophobic residues (learnable from the sequence)."""

    task_type = "regression"
    tasks = ["hydrophobic"]

    def __init__(self, proteins):
        self.proteins = proteins
        self.names = [p.name for p in proteins]
        self.lengths = [len(p.sequence) for p in proteins]
        self.targets = torch.tensor([[sum(c in "AVLIMFWC" for c in p.sequence) / len(p.sequence)]
                                     for p in proteins])

    def __len__(self):
        return len(self.proteins)

    def __getitem__(self, i):
        return {"protein": self.proteins[i], "target": self.targets[i].clone()}


def test_engine_trains_property_head_and_checkpoint_reloads(tmp_path):
    torch.set_num_threads(1)
    proteins = real_proteins(12, 30, 80)
    train, valid, test = Regression(proteins[:8]), Regression(proteins[8:10]), Regression(proteins[10:])
    cfg = load_config(overrides=[
        "train.epochs=1", "data.batch_size=4", "run.progress=false", "run.tensorboard=false", "train.seed=1",
        f"run.out_dir={tmp_path}", "model.esm=random:tiny", "model.structure=gearnet", "model.hidden_dims=[16,16]",
        "task.name=property", "task.sequence_model_lr_ratio=0"])
    seed_everything(cfg.train.seed)
    task = build_task(cfg.task, build_model(cfg.model), train)
    esm_before = [p.detach().clone() for p in task.model.sequence_model.parameters()]
    summary = Engine(cfg, task, train, valid, test, out_dir=tmp_path, collate_fn=collate_samples).fit()
    assert summary["selection_metric"] == "spearmanr" and summary["selection_mode"] == "max"
    assert set(summary["best_valid"]) >= {"mae", "rmse", "spearmanr", "pearsonr"}
    # preprocess ran on the training set: the normalisation buffers hold its mean / std
    assert abs(task.mean.item() - train.targets.mean().item()) < 1e-6
    assert abs(task.std.item() - train.targets.std().item()) < 1e-6
    assert all(torch.equal(a, b) for a, b in zip(esm_before, task.model.sequence_model.parameters()))

    reloaded, config = load_task(tmp_path)
    assert isinstance(reloaded, PropertyPrediction) and config.task.name == "property"
    inputs = collate_samples([test[i] for i in range(len(test))])
    task.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded.predict(inputs), task.predict(inputs))
