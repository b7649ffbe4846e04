"""Benchmark: CDConv (continuous-discrete convolution) on real proteins, fused op vs the unfused reference.

Tasks, each forward (`fwd`) and forward+backward (`fwd+bwd`), at batch sizes 2 and 16 proteins (every
batch holds one real complex of >= 1000 residues plus real single chains):
  layer_s{1..4}  one esmgear_fast.nn.CDConv as the ESM-GearNet encoder's stage s sees it: after s-1
                 pair poolings of the batch (positions, numbering, frames pooled as the encoder does),
                 radius 8/12/16/20 A, width C = hidden_dim * base_width / 64 = 64/128/256/512 for the
                 encoder widths 256/512/1024/2048 (the convolution runs inside each block at that
                 width), K = 32 kernel channels, l = 21; input features random.
  encoder        the full ESM-GearNet CDConv encoder (input 21-dim one-hot residues, embedding 16,
                 hidden [256, 512, 1024, 2048]) in eval mode (fwd) / train mode without dropout (fwd+bwd).
Implementations (identical parameters and edges):
  auto       esmgear_fast.ops.cdconv with backend "auto" (the fused kernel picked for the device)
  reference  backend "reference": plain PyTorch materialising the [E, K*C] per-edge messages
Peak memory: on CUDA torch's allocator peak; on CPU the peak of live tensor bytes during one call, from
the torch profiler's memory events (every allocation/free of torch's CPU allocator, counted from the
start of the call; inputs and parameters allocated before are excluded). That call is run once per
implementation before timing and doubles as its warm-up. (Process RSS was tried first: glibc keeps
freed heap memory, so the RSS growth depended on what ran before and was not usable.)
Defaults (sizes 2 16, 2 repeats, chains <= 300 residues) take a few minutes on a quiet machine (the
reference encoder forward+backward at 16 proteins dominates); --quick is a ~30 s smoke run.

    python benchmarks/bench_cdconv.py [--quick] [--device cuda] [--sizes 2 16] [--repeats 2]
                                      [--tasks layer_s1 ... encoder] [--threads N] [--out f.jsonl]

On a CPU shared with other jobs use --threads 1: with 2 OpenMP threads competing for busy cores the
elementwise ops slowed down 3-20x in our runs (encoder forward 0.32 s with 1 thread, 1.1-6 s with 2).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import machine_info, measure, print_header, print_table, write_jsonl  # noqa: E402

from esmgear_fast.data import collate  # noqa: E402
from esmgear_fast.models import CDConv as CDConvEncoder  # noqa: E402
from esmgear_fast.models import cdconv_pool, residue_frames  # noqa: E402
from esmgear_fast.nn import CDConv  # noqa: E402
from esmgear_fast.testing import real_complexes, real_proteins  # noqa: E402

HIDDEN = [256, 512, 1024, 2048]
CUTOFFS = [8.0, 12.0, 16.0, 20.0]
BASE_WIDTH = 16.0
ALL_TASKS = ["layer_s1", "layer_s2", "layer_s3", "layer_s4", "encoder"]


def make_batch(size: int, min_complex: int, max_chain: int, device: torch.device):
    """One real complex of >= min_complex residues (the smallest such) plus size-1 real chains."""
    complexes = sorted(real_complexes(min_len=min_complex), key=len)
    if not complexes:
        raise SystemExit(f"no real complex with >= {min_complex} residues in the fixture")
    chains = real_proteins(min_len=50, max_len=max_chain)
    step = max(1, len(chains) // max(1, size - 1))
    members = [complexes[0]] + [chains[(i * step) % len(chains)] for i in range(size - 1)]
    return collate(members).to(device)


def auto_backend(device: torch.device):
    """The backend "auto" resolves to for esmgear_fast.ops.cdconv on this device (None if unknown)."""
    import importlib

    from esmgear_fast.backend import resolve
    try:
        module = importlib.import_module("esmgear_fast.ops.cdconv")
        return resolve("cdconv", "auto", device, module._backends_for(device))
    except (AttributeError, ImportError):
        return None


def peak_tensor_memory_mb(fn) -> float:
    """Peak of live CPU tensor bytes allocated during fn() (torch profiler memory events, CPU allocator)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:  # nbytes() is positive for an allocation, negative for a free
        live += event.nbytes()
        peak = max(peak, live)
    return peak / 2**20


def layer_tasks(batch, device, stages):
    """(name, callables) for one CDConv per requested stage, inputs pooled as the encoder pools them."""
    pos, seq, b = batch.pos, batch.residue_number, batch.batch
    nb = batch.num_proteins
    ori = residue_frames(pos, b, nb)
    x0 = torch.zeros(pos.shape[0], 1, device=device)
    out = []
    for s in range(4):
        if s:
            x0, pos, seq, ori, b = cdconv_pool(x0, pos, seq, ori, b, nb)
        name = f"layer_s{s + 1}"
        if name not in stages:
            continue
        width = int(HIDDEN[s] * BASE_WIDTH / 64)
        torch.manual_seed(s)
        layer = CDConv(CUTOFFS[s], 21, [32], width, width).to(device)
        edge_index = layer.edges(pos, b)
        x = torch.randn(pos.shape[0], width, device=device, requires_grad=True)

        def call(backend, layer=layer, x=x, pos=pos, seq=seq, ori=ori, b=b, edge_index=edge_index):
            layer.backend = backend
            return layer(x, pos, seq, ori, b, edge_index)
        out.append((name, call, list(layer.parameters()) + [x],
                    {"nodes": int(pos.shape[0]), "edges": int(edge_index.shape[1]), "width": width,
                     "radius": CUTOFFS[s]}))
    return out


def encoder_task(batch, device):
    torch.manual_seed(0)
    model = CDConvEncoder(input_dim=21, dropout=0.0).to(device)
    x = torch.nn.functional.one_hot(batch.residue_type, 21).float()

    def call(backend, train=False):
        for layer in model.layers:
            layer.conv.backend = backend
        model.train(train)
        return model(x, batch.pos, batch.residue_number, batch.batch, batch.num_proteins)["graph_feature"]
    return ("encoder", call, list(model.parameters()),
            {"nodes": batch.num_nodes, "edges": None, "width": HIDDEN[-1], "radius": None})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="proteins per batch (default 2 16)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 2; --quick 1)")
    parser.add_argument("--tasks", nargs="+", default=None, choices=ALL_TASKS)
    parser.add_argument("--min-complex", type=int, default=1000, help="size of the large real complex")
    parser.add_argument("--max-chain", type=int, default=300, help="longest single chain added to batches")
    parser.add_argument("--impls", nargs="+", default=["auto", "reference"])
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: batch size 2, 1 repeat, stage-1 and stage-4 layers only")
    parser.add_argument("--out", default=None, help="JSON-lines file (default: benchmarks/results/)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    sizes = args.sizes or ([2] if args.quick else [2, 16])
    repeats = args.repeats or (1 if args.quick else 2)
    tasks = args.tasks or (["layer_s1", "layer_s4"] if args.quick else ALL_TASKS)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info(device)
    info["auto_backend"] = auto_backend(device)
    print_header(info, f"CDConv, ESM-GearNet configuration (K=32, l=21); auto = {info['auto_backend']}")

    rows = []
    for size in sizes:
        batch = make_batch(size, args.min_complex, args.max_chain, device)
        work = layer_tasks(batch, device, tasks)
        if "encoder" in tasks:
            work.append(encoder_task(batch, device))
        for name, call, params, meta in work:
            for mode in ("fwd", "fwd+bwd"):
                def make(impl, call=call, params=params, mode=mode, name=name):
                    if mode == "fwd":
                        def run():
                            with torch.no_grad():
                                call(impl)
                        return run

                    def run():
                        out = call(impl, True) if name == "encoder" else call(impl)
                        out.sum().backward()
                        for p in params:
                            p.grad = None
                    return run
                fns = {impl: make(impl) for impl in args.impls}
                cpu_memory = device.type == "cpu" and not args.no_memory
                # On CPU the memory pass is the warm-up call of each implementation.
                peaks = {impl: peak_tensor_memory_mb(fn) for impl, fn in fns.items()} if cpu_memory else {}
                res = measure(fns, device, repeats=repeats, warmup=0 if cpu_memory else 1)
                for impl, peak in peaks.items():
                    res[impl]["peak_mem_mb"] = peak
                for impl, r in res.items():
                    row = {"task": name, "mode": mode, "impl": impl, "proteins": size, "residues": batch.num_nodes,
                           "max_protein": batch.max_num_residues, **meta, **r}
                    if "reference" in res:
                        row["speedup_vs_reference"] = res["reference"]["median_ms"] / r["median_ms"]
                        if r.get("peak_mem_mb") and res["reference"].get("peak_mem_mb"):
                            row["mem_vs_reference"] = r["peak_mem_mb"] / res["reference"]["peak_mem_mb"]
                    rows.append(row)
                    print(f"# {name:9s} {mode:7s} B={size:<3d} {impl:9s} {r['median_ms']:10.1f} ms"
                          + (f"  peak {r['peak_mem_mb']:.0f} MB" if "peak_mem_mb" in r else ""), flush=True)
    columns = ["task", "mode", "proteins", "nodes", "edges", "width", "impl", "median_ms", "speedup_vs_reference",
               "peak_mem_mb", "mem_vs_reference"]
    print_table(rows, columns)
    path = write_jsonl(rows, info, "bench_cdconv", args.out)
    print(f"# results appended to {path}")


if __name__ == "__main__":
    main()
