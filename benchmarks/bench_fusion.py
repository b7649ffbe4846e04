"""Benchmark: one training step (forward + backward + Adam) of ESM-GearNet (serial fusion), ours vs a plain
composition in the style of the original code.

Model: ESM-2 of a given shape (random weights: speed does not depend on them) -> GearNet 6x512 on ESM's
per-residue output -> [ESM mean || GearNet sum] graph feature -> 3-layer MLP head (TorchDrug's
MultipleBinaryClassification, 538 EC labels) -> BCE loss -> Adam step over every parameter. Batches are
real proteins (<= 550 residues, as ESM-GearNet's EC/GO configs truncate them).

Implementations:

  ours        esmgear_fast.models.FusionNetwork: packed ESM-2 (no padding), GearNetGraph, our GearNet;
              under autocast with --dtype (default bf16 on CUDA, fp32 on CPU)
  reference   fair-esm's ESM2 on a padded token batch (TorchDrug's EvolutionaryScaleModeling: residue
              types -> tokens, BOS/EOS, pad, unpad), TorchDrug's graph algorithm
              (esmgear_fast.testing.torchdrug_style_graph with plain-PyTorch radius/kNN), TorchDrug's
              GearNet computation (sparse [N, N*R] adjacency + torch.sparse.mm, see bench_gearnet.py),
              float32

Parts (each timed on its own, forward + backward where there are parameters): ``step`` (the whole
training step), ``esm``, ``graph`` (construction), ``structure`` (GearNet on a fixed ESM output),
``head`` (MLP + loss), ``optimizer`` (Adam step). Reported: median ms, proteins/s, speed-up vs reference,
and on CUDA the peak memory and its ratio to reference. Before timing, both graph features of the batch
are computed once in float32 (train mode) and their largest difference relative to the largest value is
recorded as ``max_rel_diff_vs_reference`` (a sanity check that both compute the same model). Timed
round-robin in one process (_harness.py).

    python benchmarks/bench_fusion.py [--device cuda] [--models 8M 35M 150M 650M] [--batch-sizes 2 8]
        [--parts step esm graph structure head optimizer] [--repeats 3] [--out results.jsonl]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import machine_info, measure, print_header, print_table, spread_batch, write_jsonl  # noqa: E402
from bench_gearnet import torchdrug_gearnet  # noqa: E402

from esmgear_fast.esm import ESM2_CONFIGS, EsmConfig, state_dict_from_fair_esm  # noqa: E402
from esmgear_fast.esm.loading import _load_into  # noqa: E402
from esmgear_fast.esm.model import ESM2  # noqa: E402
from esmgear_fast.models import FusionNetwork, GearNet, torchdrug_esm_mapping  # noqa: E402
from esmgear_fast.testing import real_proteins, torchdrug_style_graph  # noqa: E402

MODELS = {
    "tiny": EsmConfig(2, 64, 4),
    "8M": ESM2_CONFIGS["esm2_t6_8M_UR50D"],
    "35M": ESM2_CONFIGS["esm2_t12_35M_UR50D"],
    "150M": ESM2_CONFIGS["esm2_t30_150M_UR50D"],
    "650M": ESM2_CONFIGS["esm2_t33_650M_UR50D"],
}
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PARTS = ("step", "esm", "graph", "structure", "head", "optimizer")
NUM_LABELS = 538  # EC


def mlp_head(dim: int, hidden: int) -> nn.Module:
    """TorchDrug's MLP(dim, [hidden, hidden, NUM_LABELS]) of MultipleBinaryClassification (num_mlp_layer 3)."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, NUM_LABELS))


def build(name: str, device: torch.device, widths, with_reference: bool):
    cfg = MODELS[name]
    import esm as fair_esm

    torch.manual_seed(0)
    ref_esm = fair_esm.model.esm2.ESM2(num_layers=cfg.num_layers, embed_dim=cfg.embed_dim,
                                       attention_heads=cfg.attention_heads)
    ours_esm = ESM2(cfg)
    _load_into(ours_esm, state_dict_from_fair_esm(ref_esm.state_dict(), cfg.num_layers), "fair-esm")
    gearnet = GearNet(cfg.embed_dim, widths)
    ours = FusionNetwork(ours_esm, gearnet, "serial").to(device).train()
    head = mlp_head(ours.output_dim, ours.output_dim).to(device)
    opt = torch.optim.Adam(list(ours.parameters()) + list(head.parameters()), lr=1e-5)
    ref = None
    if with_reference:
        ref_gearnet = GearNet(cfg.embed_dim, widths)
        ref_gearnet.load_state_dict(gearnet.state_dict())
        ref_head = mlp_head(ours.output_dim, ours.output_dim)
        ref_head.load_state_dict(head.state_dict())
        ref_esm, ref_gearnet, ref_head = ref_esm.to(device).train(), ref_gearnet.to(device).train(), ref_head.to(device)
        ref_opt = torch.optim.Adam(list(ref_esm.parameters()) + list(ref_gearnet.parameters())
                                   + list(ref_head.parameters()), lr=1e-5)
        ref = (ref_esm, ref_gearnet, ref_head, ref_opt)
    else:
        del ref_esm
    return (ours, head, opt), ref


# ---------------------------------------------------------------------------------------- reference path
def torchdrug_style_esm(esm_model, mapping, residue_type, num_residues):
    """TorchDrug's EvolutionaryScaleModeling.forward: residue types -> tokens, BOS/EOS, padded batch,
    last layer, unpadded residue features and mean readout."""
    tokens = mapping[residue_type]
    B, L = num_residues.numel(), int(num_residues.max()) + 2
    padded = torch.full((B, L), 1, dtype=torch.long, device=tokens.device)  # <pad> = 1
    valid = torch.arange(L, device=tokens.device)[None, :] < (num_residues[:, None] + 2)
    bos, eos = tokens.new_tensor([0]), tokens.new_tensor([2])  # <cls>, <eos>
    starts = (num_residues.cumsum(0) - num_residues).tolist()
    padded[valid] = torch.cat([torch.cat([bos, tokens[s:s + n], eos]) for s, n in zip(starts, num_residues.tolist())])
    out = esm_model(padded, repr_layers=[esm_model.num_layers])["representations"][esm_model.num_layers]
    inner = valid.clone()
    inner[:, 0] = False
    inner[torch.arange(B), num_residues + 1] = False
    node = out[inner]
    batch = torch.repeat_interleave(torch.arange(B, device=node.device), num_residues)
    graph = node.new_zeros(B, node.size(1)).index_add_(0, batch, node) / num_residues[:, None].to(node.dtype)
    return node, graph


def reference_graph(batch):
    edges = torchdrug_style_graph(batch.pos, batch.batch, batch.chain_id)
    return edges[:, :2].t(), edges[:, 2]


def implementations(ours_parts, ref_parts, batch, device, dtype, parts):
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else contextlib.nullcontext
    ours, head, opt = ours_parts
    B = batch.num_proteins
    g = torch.Generator().manual_seed(0)
    target = (torch.rand(B, NUM_LABELS, generator=g) < 0.01).float().to(device)
    fns = {}

    def ours_step():
        with autocast():
            out = ours(batch)
            loss = F.binary_cross_entropy_with_logits(head(out["graph_feature"]).float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    esm_in = ours.sequence_model
    with torch.no_grad(), autocast():
        fixed_seq = ours.encode_sequence(batch).detach()
        graph_feature = ours(batch)["graph_feature"].detach()
    ours.zero_grad(set_to_none=True)
    graph = ours.build_graph(batch)

    def ours_esm():
        with autocast():
            rep = ours.encode_sequence(batch)
        rep.float().pow(2).mean().backward()
        esm_in.zero_grad(set_to_none=True)

    def ours_structure():
        with autocast():
            out = ours.encode_structure(batch, fixed_seq, graph)
        out["graph_feature"].float().pow(2).mean().backward()
        ours.structure_model.zero_grad(set_to_none=True)

    def head_fn(h):
        def run():
            with autocast():
                loss = F.binary_cross_entropy_with_logits(h(graph_feature).float(), target)
            loss.backward()
            h.zero_grad(set_to_none=True)
        return run

    def opt_fn(o, params):
        def run():
            for p in params:
                p.grad = torch.zeros_like(p)
            o.step()
            o.zero_grad(set_to_none=True)
        return run

    table = {"step": ours_step, "esm": ours_esm, "graph": lambda: ours.build_graph(batch),
             "structure": ours_structure, "head": head_fn(head),
             "optimizer": opt_fn(opt, [p for grp in opt.param_groups for p in grp["params"]])}
    for part in parts:
        fns[(part, "ours")] = table[part]

    check = None
    if ref_parts is not None:
        ref_esm, ref_gearnet, ref_head, ref_opt = ref_parts
        mapping = torchdrug_esm_mapping().to(device)
        mapping = torch.where(mapping < 0, torch.arange(mapping.numel(), device=device), mapping)  # TorchDrug's fallback
        ref_graph = reference_graph(batch)
        nr = batch.num_residues
        with torch.no_grad():  # same weights, same batch: the two fp32 graph features must agree
            node, seq_graph = torchdrug_style_esm(ref_esm, mapping, batch.residue_type, nr)
            st = torchdrug_gearnet(ref_gearnet, node, ref_graph, batch.batch, B)
            expected = torch.cat([seq_graph, st["graph_feature"]], -1)
            got = ours(batch)["graph_feature"]
            check = float((got - expected).abs().max() / expected.abs().max())

        def ref_step():
            node, seq_graph = torchdrug_style_esm(ref_esm, mapping, batch.residue_type, nr)
            st = torchdrug_gearnet(ref_gearnet, node, reference_graph(batch), batch.batch, B)
            feature = torch.cat([seq_graph, st["graph_feature"]], -1)
            loss = F.binary_cross_entropy_with_logits(ref_head(feature), target)
            loss.backward()
            ref_opt.step()
            ref_opt.zero_grad(set_to_none=True)

        def ref_esm_fn():
            node, _ = torchdrug_style_esm(ref_esm, mapping, batch.residue_type, nr)
            node.pow(2).mean().backward()
            ref_esm.zero_grad(set_to_none=True)

        fixed_fp32 = fixed_seq.float()

        def ref_structure():
            out = torchdrug_gearnet(ref_gearnet, fixed_fp32, ref_graph, batch.batch, B)
            out["graph_feature"].pow(2).mean().backward()
            ref_gearnet.zero_grad(set_to_none=True)

        gf32 = graph_feature.float()

        def ref_head_fn():
            F.binary_cross_entropy_with_logits(ref_head(gf32), target).backward()
            ref_head.zero_grad(set_to_none=True)

        table = {"step": ref_step, "esm": ref_esm_fn, "graph": lambda: reference_graph(batch),
                 "structure": ref_structure, "head": ref_head_fn,
                 "optimizer": opt_fn(ref_opt, [p for grp in ref_opt.param_groups for p in grp["params"]])}
        for part in parts:
            fns[(part, "reference")] = table[part]
    return fns, check


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=list(DTYPES), default=None,
                   help="autocast dtype for ours (default: bf16 on CUDA, fp32 on CPU); reference always fp32")
    p.add_argument("--models", nargs="+", default=None, choices=list(MODELS))
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[2, 8])
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    p.add_argument("--widths", nargs="+", type=int, default=[512] * 6, help="GearNet hidden dims")
    p.add_argument("--max-len", type=int, default=550)
    p.add_argument("--no-reference", action="store_true", help="time ours only")
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
    proteins = real_proteins(min_len=50, max_len=args.max_len)
    info = machine_info(device)
    print_header(info, "ESM-GearNet serial training step")
    rows = []
    for name in models:
        ours_parts, ref_parts = build(name, device, args.widths, not args.no_reference)
        for bs in args.batch_sizes:
            batch = spread_batch(proteins, bs, device)
            fns, check = implementations(ours_parts, ref_parts, batch, device, dtype, args.parts)
            res = measure({f"{part}/{impl}": fn for (part, impl), fn in fns.items()}, device,
                          repeats=args.repeats, warmup=args.warmup)
            batch_rows = []
            for part in args.parts:
                base = res.get(f"{part}/reference")
                for impl in ("ours", "reference"):
                    r = res.get(f"{part}/{impl}")
                    if r is None:
                        continue
                    row = {"model": name, "esm_layers": MODELS[name].num_layers, "esm_dim": MODELS[name].embed_dim,
                           "gearnet": "x".join(map(str, args.widths)) if len(set(args.widths)) > 1
                           else f"{len(args.widths)}x{args.widths[0]}",
                           "batch_size": bs, "residues": batch.num_nodes, "max_len": batch.max_num_residues,
                           "part": part, "impl": impl, "dtype": dtype_name if impl == "ours" else "fp32",
                           "median_ms": r["median_ms"], "repeats": r["repeats"],
                           "proteins_per_s": bs / (r["median_ms"] / 1e3) if part == "step" else None,
                           "peak_mem_mb": r.get("peak_mem_mb"),
                           "max_rel_diff_vs_reference": check if part == "step" else None}
                    if base is not None:
                        row["speedup_vs_reference"] = base["median_ms"] / r["median_ms"]
                        if r.get("peak_mem_mb") and base.get("peak_mem_mb"):
                            row["mem_ratio_vs_reference"] = r["peak_mem_mb"] / base["peak_mem_mb"]
                    batch_rows.append(row)
            rows += batch_rows
            path = write_jsonl(batch_rows, info, "bench_fusion", args.out)  # per batch: a crash keeps earlier rows
        del ours_parts, ref_parts
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print_table(rows, ["model", "batch_size", "residues", "part", "impl", "dtype", "median_ms", "proteins_per_s",
                       "speedup_vs_reference", "peak_mem_mb", "mem_ratio_vs_reference"])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
