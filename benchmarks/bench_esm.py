"""Benchmark: fast packed ESM-2 (esmgear_fast.esm) vs fair-esm's ESM2 (padded, plain PyTorch attention).

For each model shape (random weights; speed does not depend on them) and batch size, batches of
proteins with lengths drawn like EC/GO training proteins (log-normal, median ~260, clipped to
50..1000 residues) are encoded. Tasks: ``forward`` (inference, no grad) and ``train`` (forward +
backward of a loss on the last-layer representations). Implementations:

  fair_esm        fair-esm ESM2, float32, padded to the longest sequence (the baseline)
  ours-<attn>     esmgear_fast.esm.ESM2, packed without padding, attention impl <attn>
                  (``loop`` / ``padded`` / ``varlen``; ``auto`` picks per device), run under
                  autocast with --dtype (fp32 = no autocast)

Reported: median ms per batch, residues (tokens) per second, speed-up vs fair_esm, and on CUDA the
peak memory and its ratio to fair_esm. Timed round-robin in one process (see _harness.py).

    python benchmarks/bench_esm.py [--device cuda] [--dtype bf16] [--models 8M 35M 150M 650M]
        [--batch-sizes 8 32] [--tasks forward train] [--attn auto loop padded] [--out results.jsonl]
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import machine_info, measure, print_table, write_jsonl  # noqa: E402

from esmgear_fast.esm import ESM2_CONFIGS, EsmConfig, load_esm, state_dict_from_fair_esm  # noqa: E402
from esmgear_fast.esm.loading import _load_into  # noqa: E402

MODELS = {
    "tiny": EsmConfig(2, 64, 4),
    "8M": ESM2_CONFIGS["esm2_t6_8M_UR50D"],
    "35M": ESM2_CONFIGS["esm2_t12_35M_UR50D"],
    "150M": ESM2_CONFIGS["esm2_t30_150M_UR50D"],
    "650M": ESM2_CONFIGS["esm2_t33_650M_UR50D"],
}
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
LETTERS = "ACDEFGHIKLMNPQRSTVWY"


def sample_lengths(n: int, seed: int, low: int = 50, high: int = 1000) -> list:
    """Lengths like EC/GO proteins: log-normal (median 260, sigma 0.6) clipped to [low, high]."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.exp(math.log(260) + 0.6 * torch.randn(n, generator=g)).round().clamp(low, high)
    return [int(v) for v in lengths]


def sample_sequences(lengths, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    return ["".join(LETTERS[i] for i in torch.randint(0, 20, (n,), generator=g).tolist()) for n in lengths]


def build(name: str, device: torch.device, with_fair_esm: bool, attn_impls):
    cfg = MODELS[name]
    ours = load_esm(cfg, seed=0).to(device)
    ref = None
    if with_fair_esm:
        import esm

        ref = esm.model.esm2.ESM2(num_layers=cfg.num_layers, embed_dim=cfg.embed_dim,
                                  attention_heads=cfg.attention_heads).eval()
        _load_into(ours, state_dict_from_fair_esm(ref.state_dict(), cfg.num_layers), "fair-esm")
        ours.to(device)
        ref.to(device)
    return ours, ref


def tasks_for(ours, ref, seqs, device, dtype, task, attn_impls):
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else contextlib.nullcontext
    fns = {}
    if ref is not None:
        import esm

        convert = esm.data.Alphabet.from_architecture("ESM-1b").get_batch_converter()
        _, _, tokens = convert([(str(i), s) for i, s in enumerate(seqs)])
        tokens = tokens.to(device)
        L = ref.num_layers

        if task == "forward":
            def fair():
                with torch.no_grad():
                    return ref(tokens, repr_layers=[L])["representations"][L]
        else:
            def fair():
                rep = ref(tokens, repr_layers=[L])["representations"][L]
                rep.float().pow(2).mean().backward()
                ref.zero_grad(set_to_none=True)
        fns["fair_esm"] = fair

    for impl in attn_impls:
        def run(impl=impl):
            ours.set_attention_impl(impl)
            if task == "forward":
                with torch.no_grad(), autocast():
                    return ours(seqs).representations
            with autocast():
                rep = ours(seqs).representations
            rep.float().pow(2).mean().backward()
            ours.zero_grad(set_to_none=True)
        fns[f"ours-{impl}"] = run
    return fns


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=list(DTYPES), default=None,
                   help="autocast dtype for ours (default: bf16 on CUDA, fp32 on CPU); fair_esm always fp32")
    p.add_argument("--models", nargs="+", default=None, choices=list(MODELS))
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[8])
    p.add_argument("--tasks", nargs="+", default=["forward", "train"], choices=["forward", "train"])
    p.add_argument("--attn", nargs="+", default=None, help="attention impls of ours (default: auto, + loop/padded on CPU)")
    p.add_argument("--max-len", type=int, default=1000, help="clip sampled lengths to this")
    p.add_argument("--no-fair-esm", action="store_true", help="time ours only")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    dtype = DTYPES[dtype_name]
    models = args.models or (["8M", "35M", "150M", "650M"] if device.type == "cuda" else ["8M", "35M"])
    attn = args.attn or (["auto"] if device.type == "cuda" else ["loop", "padded"])
    with_fair_esm = not args.no_fair_esm
    if with_fair_esm:
        try:
            import esm  # noqa: F401
        except ImportError:
            print("fair-esm not installed: timing ours only (pip install fair-esm)")
            with_fair_esm = False

    info = machine_info(device)
    rows = []
    for name in models:
        ours, ref = build(name, device, with_fair_esm, attn)
        for bs in args.batch_sizes:
            lengths = sample_lengths(bs, seed=bs, high=args.max_len)
            seqs = sample_sequences(lengths, seed=bs)
            residues = sum(lengths)
            for task in args.tasks:
                if task == "train":
                    ours.train()
                fns = tasks_for(ours, ref, seqs, device, dtype, task, attn)
                res = measure(fns, device, repeats=args.repeats, warmup=args.warmup)
                ours.eval()
                base = res.get("fair_esm")
                for impl, r in res.items():
                    row = {"model": name, "task": task, "batch_size": bs, "residues": residues,
                           "max_len": max(lengths), "impl": impl, "dtype": "fp32" if impl == "fair_esm" else dtype_name,
                           "median_ms": r["median_ms"], "repeats": r["repeats"],
                           "tokens_per_s": residues / (r["median_ms"] / 1e3),
                           "peak_mem_mb": r.get("peak_mem_mb")}
                    if base is not None:
                        row["speedup_vs_fair_esm"] = base["median_ms"] / r["median_ms"]
                        if "peak_mem_mb" in r and base.get("peak_mem_mb"):
                            row["mem_ratio_vs_fair_esm"] = r["peak_mem_mb"] / base["peak_mem_mb"]
                    rows.append(row)
        del ours, ref
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print_table(rows, ["model", "task", "batch_size", "residues", "max_len", "impl", "dtype", "median_ms",
                       "tokens_per_s", "speedup_vs_fair_esm", "peak_mem_mb", "mem_ratio_vs_fair_esm"])
    path = write_jsonl(rows, info, "bench_esm", args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
