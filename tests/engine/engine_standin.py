"""A tiny task on real proteins for the engine tests (stands in for the real datasets/tasks; same interface).

Run as a script for subprocess tests:  python tests/engine/engine_standin.py OUT_DIR [key=value ...]
Extra (non-config) switches: ``--nan-at-item=K`` makes item K's target NaN; ``--oom-above=L`` makes the
forward raise ``torch.OutOfMemoryError`` for a batch with a protein longer than L residues.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
from torch import nn

from esmgear_fast.data.samples import collate_samples
from esmgear_fast.io import Protein
from esmgear_fast.models import GearNet, residue_one_hot
from esmgear_fast.nn import GearNetGraph
from esmgear_fast.testing import real_proteins


@dataclass
class Output:
    loss: torch.Tensor
    pred: Optional[torch.Tensor] = None
    target: Optional[torch.Tensor] = None
    logs: Dict[str, torch.Tensor] = field(default_factory=dict)


_GROUPS = ["AVLIMFWC", "DEKRH", "STNQGPY"]   # hydrophobic / charged / polar: labels from composition


def _window(p: Protein, a: int, b: int) -> Protein:
    return Protein(name=p.name, sequence=p.sequence[a:b], residue_type=p.residue_type[a:b], pos=p.pos[a:b],
                   backbone=p.backbone[a:b], chain_id=p.chain_id[a:b], chain_names=list(p.chain_names),
                   residue_number=p.residue_number[a:b], insertion_code=p.insertion_code[a:b],
                   plddt=None if p.plddt is None else p.plddt[a:b], num_skipped_residues=0)


class TinyProteins(torch.utils.data.Dataset):
    """Real chains with 3 binary labels: is the fraction of each residue group above the set's median?
    Training items get a random window of at most ``window`` residues (a random transform)."""

    task_type = "multilabel"
    tasks = ["hydrophobic", "charged", "polar"]

    def __init__(self, proteins, window: Optional[int] = None, nan_at: Optional[int] = None, _targets=None):
        self.proteins = proteins
        self.window = window
        self.nan_at = nan_at
        if _targets is None:
            frac = torch.tensor([[sum(c in g for c in p.sequence) / len(p) for g in _GROUPS] for p in proteins])
            _targets = (frac > frac.median(0).values).float()
        self.targets = _targets
        self.names = [p.name for p in proteins]
        self.lengths = [len(p) for p in proteins]

    def __len__(self):
        return len(self.proteins)

    def __getitem__(self, i):
        p = self.proteins[i]
        if self.window is not None and len(p) > self.window:
            start = int(torch.randint(0, len(p) - self.window + 1, ()))
            p = _window(p, start, start + self.window)
        target = self.targets[i].clone()
        if self.nan_at is not None and i == self.nan_at:
            target[:] = float("nan")
        return {"protein": p, "target": target}

    def subset(self, idx, window=None, nan_at=None):
        return TinyProteins([self.proteins[i] for i in idx], window, nan_at, self.targets[idx])

    def split(self):
        n = len(self)
        a, b = int(n * 0.6), int(n * 0.8)
        return (self.subset(list(range(a)), window=40), self.subset(list(range(a, b))),
                self.subset(list(range(b, n))))


class TinyTask(nn.Module):
    selection_metric = "accuracy"
    selection_mode = "max"

    def __init__(self, hidden: int = 16, num_tasks: int = 3, oom_above: Optional[int] = None,
                 nan_at_call: Optional[int] = None, batch_norm: bool = True):
        super().__init__()
        self.nan_at_call = nan_at_call      # training forward call (1-based) whose loss is made NaN
        self.calls = 0
        self.names_seen = []
        self.graph = GearNetGraph()
        self.model = GearNet(21, [hidden, hidden], batch_norm=batch_norm)
        self.head = nn.Sequential(nn.Linear(self.model.output_dim, hidden), nn.ReLU(), nn.Dropout(0.2),
                                  nn.Linear(hidden, num_tasks))
        self.oom_above = oom_above

    def predict(self, inputs):
        batch = inputs["protein"]
        if self.oom_above is not None and batch.max_num_residues > self.oom_above:
            raise torch.OutOfMemoryError("simulated: CUDA out of memory. Tried to allocate 20.00 GiB")
        edge_index, edge_type = self.graph(batch)
        x = residue_one_hot(batch.residue_type).float()
        out = self.model(x, edge_index, edge_type, batch.batch, batch.num_proteins)
        return self.head(out["graph_feature"])

    def forward(self, inputs):
        pred = self.predict(inputs)
        target = inputs["target"]
        loss = nn.functional.binary_cross_entropy_with_logits(pred, target)
        if self.training:
            self.calls += 1
            self.names_seen.append(list(inputs["names"]))
            if self.calls == self.nan_at_call:
                loss = loss * float("nan")
        return Output(loss, pred, target, {"mean_logit": pred.detach().mean()})

    def evaluate(self, preds, targets):
        return {"accuracy": float(((preds > 0).float() == targets).float().mean()),
                "bce": float(nn.functional.binary_cross_entropy_with_logits(preds, targets))}

    def parameter_groups(self, lr, sequence_model_lr_ratio=0.1, weight_decay=0.0):
        return [{"params": list(self.model.parameters()), "lr": lr, "weight_decay": weight_decay},
                {"params": list(self.head.parameters()), "lr": lr, "weight_decay": weight_decay}]


def datasets(n: int = 20, nan_at: Optional[int] = None):
    full = TinyProteins(real_proteins(n, min_len=30, max_len=120))
    train, valid, test = full.split()
    if nan_at is not None:
        train.nan_at = nan_at
    return train, valid, test


BASE = ["train.epochs=2", "data.batch_size=2", "train.log_every=1", "run.progress=false",
        "run.tensorboard=false", "train.deterministic=true", "train.seed=3"]


def main(argv):
    from esmgear_fast.engine.config import load_config
    from esmgear_fast.engine.loop import Engine, seed_everything
    torch.set_num_threads(1)
    out_dir, rest = argv[0], argv[1:]
    nan_at = oom = None
    overrides = []
    for a in rest:
        if a.startswith("--nan-at-item="):
            nan_at = int(a.split("=")[1])
        elif a.startswith("--oom-above="):
            oom = int(a.split("=")[1])
        else:
            overrides.append(a)
    cfg = load_config(overrides=BASE + overrides + [f"run.out_dir={out_dir}"])
    seed_everything(cfg.train.seed)
    train, valid, test = datasets(nan_at=nan_at)
    task = TinyTask(oom_above=oom)
    engine = Engine(cfg, task, train, valid, test, out_dir=out_dir, collate_fn=collate_samples)
    try:
        engine.fit()
    finally:
        from esmgear_fast.engine.distributed import cleanup
        cleanup()


if __name__ == "__main__":
    main(sys.argv[1:])
