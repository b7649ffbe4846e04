"""The paper's experiment configs (configs/<task>/*.yaml, configs/ablation/*.yaml): they load against the
schema, carry the ESM-GearNet hyper-parameters, and build a model + task head that trains on real proteins
(with the ESM shrunk to ``random:tiny`` and small encoder widths)."""
import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from esmgear_fast.data import collate
from esmgear_fast.engine.config import load_config
from esmgear_fast.io.residues import sequence_to_residue_type
from esmgear_fast.models.factory import build_model
from esmgear_fast.tasks import build_task
from esmgear_fast.testing import real_proteins

ROOT = Path(__file__).resolve().parent.parent
TASKS = ["EC", "GO-BP", "GO-MF", "GO-CC", "PSR", "MSP"]
TABLE2 = ["esm_gearnet_serial", "esm_gearnet_parallel", "esm_gearnet_cross", "esm_gvp_serial", "esm_gvp_parallel",
          "esm_gvp_cross", "esm_cdconv_serial", "esm_cdconv_parallel", "gearnet", "gvp", "cdconv", "esm2"]
FILES = sorted([f"{t}/{m}.yaml" for t in TASKS for m in TABLE2]
               + [f"ablation/{t}_esm_gearnet_lr_ratio_{r}.yaml" for t in ("EC", "GO-BP", "GO-MF", "GO-CC")
                  for r in ("0", "0.1", "1")])

# the paper's protocol per task (ESM-GearNet, Table 2 / the authors' config files), written out independently
EPOCHS = {"EC": 50, "GO-BP": 50, "GO-MF": 50, "GO-CC": 50, "PSR": 20, "MSP": 50}
SELECTION = {"EC": "f1_max", "PSR": "spearmanr", "MSP": "auroc"}
DATASET = {"EC": ("EnzymeCommission", "data/EnzymeCommission"), "PSR": ("PSR", "data/PSR"), "MSP": ("MSP", "data/MSP")}
HEAD = {"EC": "multiple_binary", "PSR": "property", "MSP": "mutation"}


def _kind(task):
    return "GO" if task.startswith("GO") else task


def test_every_config_is_there_and_nothing_else():
    found = sorted(str(p.relative_to(ROOT / "configs")) for d in TASKS + ["ablation"]
                   for p in (ROOT / "configs" / d).glob("*.yaml"))
    assert found == FILES


def test_configs_match_their_generator():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "make_configs.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("rel", FILES)
def test_paper_hyperparameters(rel):
    cfg = load_config(ROOT / "configs" / rel)
    if rel.startswith("ablation/"):
        task, rest = rel[len("ablation/"):].split("_", 1)
        model_name = "esm_gearnet_serial"
        ratio = float(rest.rsplit("_", 1)[1][:-len(".yaml")])
    else:
        task, model_name = rel[:-len(".yaml")].split("/")
        ratio = 0.1
    kind = _kind(task)
    # data
    if kind == "GO":
        assert (cfg.data.dataset, cfg.data.path, cfg.data.branch) == ("GeneOntology", "data/GeneOntology", task[3:])
    else:
        assert (cfg.data.dataset, cfg.data.path) == DATASET[kind]
    if kind == "MSP":
        assert cfg.data.transforms.pair_max_residues == 1000
    if kind in ("PSR", "MSP"):
        assert cfg.data.options == {"residue_rules": "esm_gearnet"}
    # task head and model selection
    assert cfg.task.name == HEAD["EC" if kind == "GO" else kind]
    assert cfg.task.selection_metric == SELECTION["EC" if kind == "GO" else kind]
    assert cfg.train.precision == "fp32"
    fused = model_name.startswith("esm_")
    if fused or model_name == "esm2":
        assert cfg.model.esm == "esm2_t33_650M_UR50D" and cfg.model.long_sequences == "truncate"
        assert cfg.task.sequence_model_lr_ratio == ratio
        assert cfg.optim.optimizer == "adam" and cfg.optim.lr == 1e-4
        assert cfg.train.epochs == EPOCHS[task]
        assert cfg.train.effective_batch_size == (4 if kind == "MSP" else 8)
        assert cfg.data.batch_size == (1 if kind == "MSP" else 2)
        if kind in ("EC", "GO"):
            assert (cfg.data.transforms.truncate, cfg.data.transforms.truncate_random) == (550, False)
            assert (cfg.optim.scheduler, cfg.optim.factor, cfg.optim.patience) == ("reduce_on_plateau", 0.6, 5)
        else:
            assert cfg.optim.scheduler == "none" and cfg.data.transforms.truncate is None
    if fused:
        structure, fusion = model_name[len("esm_"):].rsplit("_", 1)
        assert (cfg.model.structure, cfg.model.fusion) == (structure, fusion)
        assert cfg.model.hidden_dims is None and cfg.model.structure_options == {}   # the paper's widths
        assert cfg.model.cross_dim == (512 if fusion == "cross" else None)
        assert cfg.task.num_mlp_layer == (None if kind == "MSP" else 3)
    elif model_name == "esm2":
        assert cfg.model.structure is None
        if kind in ("EC", "GO"):
            assert cfg.task.num_mlp_layer == 2
    else:
        assert cfg.model.esm is None and cfg.model.structure == model_name and cfg.model.hidden_dims is None
        assert cfg.optim.lr == 1e-4 and cfg.train.effective_batch_size == 8
        if kind in ("PSR", "MSP"):
            assert (cfg.data.batch_size, cfg.train.epochs, cfg.optim.optimizer, cfg.optim.scheduler) == (
                8, 50, "adam", "none")
        elif model_name == "gearnet":   # GearNet's own EC/GO protocol
            assert (cfg.optim.optimizer, cfg.optim.weight_decay, cfg.train.epochs) == ("adamw", 0.0, 200)
            assert cfg.data.transforms.truncate is None
        else:
            assert cfg.train.epochs == 50 and cfg.data.transforms.truncate == 550


class _Labels:
    """What build_task reads from a dataset: the label names and their kind."""

    def __init__(self, tasks, task_type):
        self.tasks, self.task_type = tasks, task_type


SMALL = {"gearnet": "[16,16]", "gvp": "[16,16]", "cdconv": "[16,16,16,16]"}


@pytest.fixture(scope="module")
def proteins():
    return real_proteins(2, min_len=40, max_len=70)


def _mutant(p):
    i = len(p) // 2
    aa = "A" if p.sequence[i] != "A" else "G"
    seq = p.sequence[:i] + aa + p.sequence[i + 1:]
    return dataclasses.replace(p, sequence=seq, residue_type=sequence_to_residue_type(seq))


@pytest.mark.parametrize("rel", FILES)
def test_builds_and_trains_one_step(rel, proteins):
    """The config's model (tiny ESM, small widths) and head: a finite loss that reaches every trained part."""
    raw = load_config(ROOT / "configs" / rel)
    overrides = ["model.esm=random:tiny"] if raw.model.esm is not None else []
    if raw.model.structure is not None:
        overrides.append(f"model.hidden_dims={SMALL[raw.model.structure]}")
    if raw.model.cross_dim is not None:
        overrides.append("model.cross_dim=16")
    cfg = load_config(ROOT / "configs" / rel, overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    kind = cfg.data.dataset
    if kind in ("EnzymeCommission", "GeneOntology"):
        labels, target = _Labels([f"term{i}" for i in range(5)], "multilabel"), torch.tensor(
            [[1, 0, 0, 1, 0], [0, 1, 0, 0, 1]], dtype=torch.float32)
        inputs = {"protein": collate(proteins)}
    elif kind == "PSR":
        labels, target = _Labels(["gdt_ts"], "regression"), torch.tensor([[0.3], [0.7]])
        inputs = {"protein": collate(proteins)}
    else:
        labels, target = _Labels(["label"], "binary"), torch.tensor([[0.0], [1.0]])
        inputs = {"wild_type": collate(proteins), "mutant": collate([_mutant(p) for p in proteins])}
    inputs["target"] = target
    task = build_task(cfg.task, model, labels)
    assert task.selection_metric == cfg.task.selection_metric
    groups = task.parameter_groups(cfg.optim.lr, cfg.task.sequence_model_lr_ratio)
    lrs = {g["name"]: g["lr"] for g in groups}
    if cfg.model.esm is not None and cfg.task.sequence_model_lr_ratio > 0:
        assert lrs["sequence_model"] == pytest.approx(cfg.optim.lr * cfg.task.sequence_model_lr_ratio)
    else:
        assert "sequence_model" not in lrs
    task.train()
    out = task(inputs)
    assert math.isfinite(float(out.loss.detach()))
    out.loss.backward()
    trained = [p for g in groups for p in g["params"]]
    assert trained and all(p.grad is not None for p in trained[-2:])
    if cfg.model.structure is not None:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.structure_model.parameters())
    if "sequence_model" in lrs:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.sequence_model.parameters())
