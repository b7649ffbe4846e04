"""Pre-training step throughput of the six methods: ESM-GearNet (serial fusion, GearNet 6x512) with ESM frozen
(ours: ``fix_sequence_model``, ESM's weights without ``requires_grad`` so its forward records no autograd graph,
no optimiser state) vs ESM trained with autograd in fp32 (``fix_sequence_model: false``).

One step = forward + backward + Adam step on a batch of real proteins (longer than the crops, so every protein
is cropped to 100 residues, SiamDiff 150, multiview 2 views of 50). Reported per method and variant: median
ms per step, steps/s, proteins/s, the memory autograd saves for backward (all tensors kept by the graph, unique
storages; on CUDA also the peak allocation), Adam's state and the trainable parameter count.

    python benchmarks/bench_pretrain.py                        # CPU, ESM-2 8M (random weights), batch 4
    python benchmarks/bench_pretrain.py --device cuda --batch-size 32 --esm random:esm2_t33_650M_UR50D
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import machine_info, measure, print_header, print_table, spread_batch, write_jsonl  # noqa: E402

from esmgear_fast.esm import load_esm  # noqa: E402
from esmgear_fast.models import GearNet  # noqa: E402
from esmgear_fast.models.fusion import FusionNetwork  # noqa: E402
from esmgear_fast.pretrain import METHODS, build_pretrain_task  # noqa: E402
from esmgear_fast.testing import real_proteins  # noqa: E402

VARIANTS = {"frozen_esm": True, "esm_autograd_fp32": False}


def saved_for_backward_mb(fn) -> float:
    """MB of distinct tensor storages autograd keeps for backward while ``fn()`` runs its forward."""
    seen: Dict[int, int] = {}

    def pack(t):
        try:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        except RuntimeError:
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values()) / 2**20


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--esm", default="random:esm2_t6_8M_UR50D")
    p.add_argument("--hidden", type=int, nargs="+", default=[512] * 6)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="JSON lines file (default benchmarks/results/bench_pretrain-<machine>.jsonl)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    info = machine_info(device)
    print_header(info, f"ESM {args.esm}, GearNet {args.hidden}, batch {args.batch_size}")
    proteins = real_proteins(None, 160, 600)
    batch = spread_batch(proteins, args.batch_size, device)
    inputs = {"protein": batch}
    torch.manual_seed(0)
    esm = load_esm(args.esm).to(device)
    rows = []
    for method in args.methods:
        fns, extra = {}, {}
        for variant, frozen in VARIANTS.items():
            esm_copy = load_esm(args.esm).to(device) if not frozen else esm
            if not frozen:
                esm_copy.load_state_dict(esm.state_dict())
            model = FusionNetwork(esm_copy, GearNet(esm.embed_dim, list(args.hidden))).to(device)
            task = build_pretrain_task(method, model, fix_sequence_model=frozen).to(device).train()
            opt = torch.optim.Adam(task.parameter_groups(2e-4))

            def step(task=task, opt=opt):
                out = task(inputs)
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                opt.step()

            fns[variant] = step
            trainable = sum(p.numel() for g in task.parameter_groups(2e-4) for p in g["params"])
            extra[variant] = {"trainable_params": trainable, "adam_state_mb": 2 * 4 * trainable / 2**20,
                              "saved_for_backward_mb": saved_for_backward_mb(lambda: task(inputs).loss)}
        res = measure(fns, device, repeats=args.repeats, warmup=1)
        for variant in VARIANTS:
            ms = res[variant]["median_ms"]
            row = {"method": method, "variant": variant, "esm": args.esm, "hidden": args.hidden,
                   "batch_size": args.batch_size, "median_ms": ms, "steps_per_s": 1e3 / ms,
                   "proteins_per_s": args.batch_size * 1e3 / ms, **extra[variant]}
            if "peak_mem_mb" in res[variant]:
                row["peak_mem_mb"] = res[variant]["peak_mem_mb"]
            rows.append(row)
        print_table(rows[-2:], ["method", "variant", "median_ms", "steps_per_s", "proteins_per_s",
                                "saved_for_backward_mb", "adam_state_mb", "trainable_params"])
        write_jsonl(rows[-2:], info, "bench_pretrain", args.out)


if __name__ == "__main__":
    main()
