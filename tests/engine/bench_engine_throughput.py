"""Training throughput of the Engine vs a plain PyTorch loop over the same ESM-GearNet (serial) model.

    python tests/engine/bench_engine_throughput.py [--esm random:esm2_t30_150M_UR50D] [--steps 3] [--batch 2]

Both run the same proteins in the same batches (real chains, 100-300 residues), batch size, Adam, fp32, on CPU, alternating
(engine, plain, engine, plain) after one warm-up step each. Prints one JSON line per measurement and a
summary line (proteins/s, engine / plain ratio). Not a pytest test (too slow for CI).
"""
import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from esmgear_fast.data.samples import collate_samples  # noqa: E402
from esmgear_fast.engine.config import load_config  # noqa: E402
from esmgear_fast.engine.distributed import DistInfo  # noqa: E402
from esmgear_fast.engine.loop import Engine, item_seed  # noqa: E402
from esmgear_fast.models.factory import ModelConfig, build_model  # noqa: E402
from esmgear_fast.tasks import TaskConfig, build_task  # noqa: E402
from esmgear_fast.testing import real_proteins  # noqa: E402


class Data(torch.utils.data.Dataset):
    task_type = "multilabel"

    def __init__(self, proteins, num_tasks=32):
        g = torch.Generator().manual_seed(0)
        self.proteins = proteins
        self.targets = (torch.rand(len(proteins), num_tasks, generator=g) < 0.1).float()
        self.tasks = [f"t{i}" for i in range(num_tasks)]
        self.names = [p.name for p in proteins]
        self.lengths = [len(p) for p in proteins]

    def __len__(self):
        return len(self.proteins)

    def __getitem__(self, i):
        return {"protein": self.proteins[i], "target": self.targets[i]}


def plain_loop(task, data, batch, steps, seed):
    opt = torch.optim.Adam(task.parameter_groups(1e-4, 0.1))
    # the engine's own batch order for (seed, epoch 0), so both loops see the same proteins
    g = torch.Generator().manual_seed(item_seed(seed, 0))
    order = torch.randperm(len(data), generator=g).tolist()
    task.train()
    t0 = time.perf_counter()
    n = 0
    for s in range(steps):
        idx = order[s * batch:(s + 1) * batch]
        inputs = collate_samples([data[i] for i in idx])
        loss = task(inputs).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        n += len(idx)
    return n / (time.perf_counter() - t0)


def engine_run(task, data, batch, steps, seed):
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(overrides=[f"data.batch_size={batch}", "train.epochs=1", f"train.max_steps_per_epoch={steps}",
                                     "train.eval_splits=[]", "run.progress=false", "run.tensorboard=false",
                                     f"train.seed={seed}", "train.log_every=1000"])
        engine = Engine(cfg, task, data, None, None, out_dir=out, dist=DistInfo(), log=lambda m: None)
        engine.fit()
        return [r for r in engine.records if r["split"] == "train"][-1]["proteins_per_s"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--esm", default="random:esm2_t30_150M_UR50D")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    torch.manual_seed(0)
    data = Data(real_proteins(64, min_len=100, max_len=300))
    task = build_task(TaskConfig(name="multiple_binary"), build_model(ModelConfig(esm=a.esm, structure="gearnet")), data)
    # warm-up (allocator, first-call costs)
    plain_loop(task, data, a.batch, 1, 99)
    engine_run(task, data, a.batch, 1, 99)
    rows = []
    for r in range(a.rounds):
        for name, fn in (("engine", engine_run), ("plain", plain_loop)):
            v = fn(task, data, a.batch, a.steps, seed=r)
            row = {"mode": name, "round": r, "proteins_per_s": v, "esm": a.esm, "batch": a.batch, "steps": a.steps,
                   "threads": torch.get_num_threads(), "machine": platform.node(), "cpu": platform.processor()}
            rows.append(row)
            print(json.dumps(row), flush=True)
    eng = sorted(r["proteins_per_s"] for r in rows if r["mode"] == "engine")
    pla = sorted(r["proteins_per_s"] for r in rows if r["mode"] == "plain")
    print(json.dumps({"summary": True, "engine_median": eng[len(eng) // 2], "plain_median": pla[len(pla) // 2],
                      "ratio": eng[len(eng) // 2] / pla[len(pla) // 2]}))


if __name__ == "__main__":
    main()
