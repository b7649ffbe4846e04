#!/usr/bin/env python
"""Writes the paper's experiments as training configs: ``configs/{EC,GO-BP,GO-MF,GO-CC,PSR,MSP}/*.yaml`` and
``configs/ablation/*.yaml`` (run from anywhere; ``--check`` only verifies the committed files are current).

One file per row of Table 2 of the ESM-GearNet paper (Zhang et al., "A Systematic Study of Joint
Representation Learning on Protein Sequences and Structures"):

* ``esm_gearnet_{serial,parallel,cross}``, ``esm_gvp_{serial,parallel,cross}``, ``esm_cdconv_{serial,parallel}``
  (CDConv has no per-residue output, so no cross fusion);
* baselines ``gearnet``, ``gvp``, ``cdconv`` (structure only) and ``esm2`` (ESM-2-650M + MLP head);

and the ESM learning-rate-ratio ablation (ESM-GearNet serial with the ESM learning rate at 0, 0.1 and 1
times the rest) for EC and the three GO branches.

Hyper-parameters follow the YAML files of the authors' repository (DeepGraphLearning/ESM-GearNet
``config/<task>/<model>.yaml``; GearNet's EC/GO baseline: DeepGraphLearning/GearNet
``config/downstream/<task>/gearnet.yaml``). Where the authors published no file, the values are assumed
and every such file says so in its header (``ASSUMED``). The 4-GPU batches are reproduced on any number of
devices with ``train.effective_batch_size`` (gradient accumulation).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional

import yaml

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "configs"
ESM = "esm2_t33_650M_UR50D"
UPSTREAM = "DeepGraphLearning/ESM-GearNet"

# ------------------------------------------------------------------------------------------------ tasks
# per task: data section, head, selection metric, and the fused models' optimisation protocol
TASKS: Dict[str, dict] = {
    "EC": dict(
        upstream_dir="EC",
        data=dict(dataset="EnzymeCommission", path="data/EnzymeCommission",
                  transforms=dict(truncate=550, truncate_random=False)),
        task=dict(name="multiple_binary", metrics=["auprc@micro", "f1_max"], selection_metric="f1_max"),
        epochs=50, per_gpu_batch=2, scheduler=True),
    "PSR": dict(
        upstream_dir="PSR",
        data=dict(dataset="PSR", path="data/PSR", options=dict(residue_rules="esm_gearnet")),
        task=dict(name="property", normalization=True, metrics=["mae", "rmse", "spearmanr"],
                  selection_metric="spearmanr"),
        epochs=20, per_gpu_batch=2, scheduler=False),
    "MSP": dict(
        upstream_dir="MSP",
        data=dict(dataset="MSP", path="data/MSP", options=dict(residue_rules="esm_gearnet"),
                  transforms=dict(pair_max_residues=1000)),
        task=dict(name="mutation", metrics=["auroc", "auprc"], selection_metric="auroc"),
        epochs=50, per_gpu_batch=1, scheduler=False),
}
for _branch in ("BP", "MF", "CC"):
    TASKS[f"GO-{_branch}"] = dict(
        upstream_dir="GO",
        data=dict(dataset="GeneOntology", path="data/GeneOntology", branch=_branch,
                  transforms=dict(truncate=550, truncate_random=False)),
        task=dict(name="multiple_binary", metrics=["auprc@micro", "f1_max"], selection_metric="f1_max"),
        epochs=50, per_gpu_batch=2, scheduler=True)
TASK_ORDER = ["EC", "GO-BP", "GO-MF", "GO-CC", "PSR", "MSP"]

# ------------------------------------------------------------------------------------------------ models
STRUCTURES = {
    # name: (structure encoder, upstream file stem, what the encoder settings are)
    "gearnet": ("gearnet", "gearnet",
                "GearNet hidden [512]*6, 7 relations (sequential +-2, radius 10 A, kNN 10; min distance 5), "
                "batch norm, short cut, concat hidden, sum readout"),
    "gvp": ("gvp", "gvp",
            "GVP-GNN node (256, 16), edge (64, 1), 16 RBF, 5 layers, vector gate, dropout 0.1, mean readout, "
            "radius-10 A graph"),
    "cdconv": ("cdconv", "cdconv",
               "CDConv hidden [256, 512, 1024, 2048], cutoffs [8, 12, 16, 20] A, sequence cutoff 21, "
               "kernel [32], base width 16, embedding 16, batch norm, dropout 0.2"),
}
FUSIONS = {"serial": "", "parallel": "_parallel", "cross": "_cross"}


def _upstream(task: str, stem: str) -> str:
    return f"{UPSTREAM} config/{TASKS[task]['upstream_dir']}/{stem}.yaml"


def _optim(scheduler: bool, lr: float = 1e-4, optimizer: str = "adam") -> dict:
    o = {"optimizer": optimizer, "lr": lr}
    if optimizer == "adamw":
        o["weight_decay"] = 0.0
    if scheduler:
        # ReduceLROnPlateau on the validation selection metric (the engine reads its mode from the task)
        o.update(scheduler="reduce_on_plateau", factor=0.6, patience=5)
    else:
        o["scheduler"] = "none"
    return o


def _data(task: str, batch: int) -> dict:
    d = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TASKS[task]["data"].items()}
    d["batch_size"] = batch
    return d


def _config(task: str, *, model: dict, lr_ratio: Optional[float], num_mlp_layer: Optional[int],
            effective_batch: int, epochs: int, optim: dict, data_overrides: Optional[dict] = None) -> dict:
    t = TASKS[task]
    data = _data(task, min(t["per_gpu_batch"], effective_batch))
    for k, v in (data_overrides or {}).items():
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    head = dict(t["task"])
    if num_mlp_layer is not None:
        head["num_mlp_layer"] = num_mlp_layer
    if lr_ratio is not None:
        head["sequence_model_lr_ratio"] = lr_ratio
    return {
        "data": data,
        "model": model,
        "task": head,
        "optim": optim,
        "train": {"epochs": epochs, "effective_batch_size": effective_batch, "precision": "fp32"},
    }


def fused(task: str, structure: str, fusion: str, lr_ratio: float = 0.1):
    """ESM-2-650M fused with a structure encoder (Table 2's ESM-GearNet / ESM-GVP / ESM-CDConv rows)."""
    t = TASKS[task]
    encoder, stem, desc = STRUCTURES[structure]
    model = {"esm": ESM, "structure": encoder, "fusion": fusion, "long_sequences": "truncate"}
    if fusion == "cross":
        model["cross_dim"] = 512
    upstream_stem = f"esm_{stem}{FUSIONS[fusion]}"
    effective = t["per_gpu_batch"] * 4
    cfg = _config(task, model=model, lr_ratio=lr_ratio, num_mlp_layer=None if task == "MSP" else 3,
                  effective_batch=effective, epochs=t["epochs"], optim=_optim(t["scheduler"]))
    notes = [f"from {_upstream(task, upstream_stem)}",
             f"ESM-2-650M ({fusion} fusion) + {desc}",
             f"Adam lr 1e-4, ESM at lr x {lr_ratio}; batch {t['per_gpu_batch']} x 4 GPUs = {effective}"]
    if t["scheduler"]:
        notes.append("ReduceLROnPlateau(factor 0.6, patience 5) on the validation selection metric")
    if fusion == "cross":
        notes.append("cross fusion: the structure encoder reads one-hot residues, cross_dim 512")
    elif fusion == "parallel":
        notes.append("parallel fusion: the structure encoder reads one-hot residues; outputs concatenated")
    notes.append("ESM truncates sequences beyond 1022 residues as TorchDrug's ESM does")
    return cfg, notes


def structure_only(task: str, structure: str):
    """The structure-only baselines of Table 2."""
    t = TASKS[task]
    encoder, stem, desc = STRUCTURES[structure]
    model = {"esm": None, "structure": encoder}
    if task in ("PSR", "MSP"):
        # the authors' PSR/MSP baseline files: batch 8 on one GPU, Adam 1e-4, 50 epochs, no scheduler
        cfg = _config(task, model=model, lr_ratio=None, num_mlp_layer=None if task == "MSP" else 3,
                      effective_batch=8, epochs=50, optim=_optim(False),
                      data_overrides={"batch_size": 8})
        notes = [f"from {_upstream(task, stem)}", desc, "Adam lr 1e-4, batch 8 on 1 GPU, 50 epochs, no scheduler"]
        return cfg, notes
    if structure == "gearnet":
        # GearNet's own EC/GO files (the number in Table 2 comes from the GearNet paper)
        cfg = _config(task, model=model, lr_ratio=None, num_mlp_layer=3, effective_batch=8, epochs=200,
                      optim=_optim(False, optimizer="adamw"),
                      data_overrides={"transforms": None})
        go = "EC" if task == "EC" else task
        notes = [f"from DeepGraphLearning/GearNet config/downstream/{go}/gearnet.yaml", desc,
                 "AdamW lr 1e-4 (weight decay 0), batch 2 x 4 GPUs = 8, 200 epochs, no truncation, no scheduler"]
        return cfg, notes
    cfg = _config(task, model=model, lr_ratio=None, num_mlp_layer=3, effective_batch=8, epochs=t["epochs"],
                  optim=_optim(t["scheduler"]))
    notes = [f"ASSUMED: the authors published no {structure} file for {t['upstream_dir']}; this uses "
             f"ESM-GearNet's {task} protocol without ESM", desc,
             "Adam lr 1e-4, batch 8, 50 epochs, ReduceLROnPlateau(0.6, 5), TruncateProtein(550)"]
    return cfg, notes


def esm_only(task: str):
    """The ESM-2-650M baseline (an MLP head on the mean of ESM's residue outputs)."""
    t = TASKS[task]
    model = {"esm": ESM, "structure": None, "long_sequences": "truncate"}
    effective = t["per_gpu_batch"] * 4
    if task in ("PSR", "MSP"):
        cfg = _config(task, model=model, lr_ratio=0.1, num_mlp_layer=None if task == "MSP" else 2,
                      effective_batch=effective, epochs=t["epochs"], optim=_optim(t["scheduler"]))
        notes = [f"ASSUMED: the authors published no esm.yaml for {task}; this is their EC/GO esm.yaml "
                 f"(2-layer head, ESM at lr x 0.1) on ESM-GearNet's {task} protocol",
                 f"Adam lr 1e-4, batch {effective}, {t['epochs']} epochs"]
        return cfg, notes
    cfg = _config(task, model=model, lr_ratio=0.1, num_mlp_layer=2, effective_batch=effective,
                  epochs=t["epochs"], optim=_optim(t["scheduler"]))
    notes = [f"from {_upstream(task, 'esm')}",
             "ESM-2-650M + 2-layer MLP head; lr_ratio 0.1: the whole ESM at lr x 0.1, the head at lr",
             "Adam lr 1e-4, batch 2 x 4 GPUs = 8, 50 epochs, ReduceLROnPlateau(0.6, 5), TruncateProtein(550)"]
    return cfg, notes


def all_configs() -> Dict[str, tuple]:
    out: Dict[str, tuple] = {}
    for task in TASK_ORDER:
        for structure in STRUCTURES:
            for fusion in FUSIONS:
                if structure == "cdconv" and fusion == "cross":
                    continue
                out[f"{task}/esm_{structure}_{fusion}.yaml"] = fused(task, structure, fusion)
        for structure in STRUCTURES:
            out[f"{task}/{structure}.yaml"] = structure_only(task, structure)
        out[f"{task}/esm2.yaml"] = esm_only(task)
    for task in ("EC", "GO-BP", "GO-MF", "GO-CC"):
        for ratio, stem in ((0.0, "esm_gearnet_freeze"), (0.1, "esm_gearnet"), (1.0, "esm_gearnet_large_ratio")):
            cfg, notes = fused(task, "gearnet", "serial", lr_ratio=ratio)
            notes[0] = f"from {_upstream(task, stem)}"
            what = {0.0: "ESM frozen (ratio 0)", 0.1: "the paper's default (ratio 0.1)",
                    1.0: "ESM at the full learning rate (ratio 1, no sequence_model_lr_ratio upstream)"}[ratio]
            notes.insert(1, f"learning-rate-ratio ablation: {what}")
            out[f"ablation/{task}_esm_gearnet_lr_ratio_{ratio:g}.yaml"] = (cfg, notes)
    return out


class _Dumper(yaml.SafeDumper):
    """Block-style mappings, flow-style lists, floats as written in the paper (1.0e-04)."""


def _list(dumper, data):
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


def _float(dumper, data):
    text = f"{data:.1e}" if data != 0 and abs(data) < 1e-3 else repr(float(data))
    return dumper.represent_scalar("tag:yaml.org,2002:float", text)


_Dumper.add_representer(list, _list)
_Dumper.add_representer(float, _float)


def render(rel: str, cfg: dict, notes: List[str]) -> str:
    task = rel.split("/")[0]
    header = [f"# {rel} -- generated by tools/make_configs.py (edit that script, not this file)",
              *(f"# {n}" for n in notes),
              f"# run: python -m esmgear_fast.train --config configs/{rel} data.path=/your/data/folder",
              ""]
    del task
    body = yaml.dump(cfg, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=110)
    return "\n".join(header) + body


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="fail if a committed config differs from the generated one")
    args = ap.parse_args(argv)
    stale = []
    for rel, (cfg, notes) in all_configs().items():
        text = render(rel, cfg, notes)
        path = OUT / rel
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(rel)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    if args.check and stale:
        print(f"{len(stale)} config(s) differ from tools/make_configs.py: {', '.join(stale[:10])}", file=sys.stderr)
        return 1
    print(f"{len(all_configs())} configs {'checked' if args.check else 'written'} under {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
