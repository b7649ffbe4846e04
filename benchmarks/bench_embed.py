"""Benchmark: proteins/s of ``esmgear_fast.embed`` on real structure files, end to end.

Inputs: the committed real structure files (``esmgear_fast.testing.real_structure_files()``: PDB and
mmCIF, plain and gzipped, 1-5 chains) plus single chains of ``real_proteins`` written as PDB files,
repeated to ``--num-files`` files in a temporary folder. Models (random weights; speed does not depend on
them), as encoder specs:

  small     ESM-2 8M shape + GearNet 3 x 128 (serial fusion)
  650M      ESM-2 650M shape + GearNet 6 x 512 (the paper's ESM-GearNet shape), few proteins

Rows (per model), each the median of ``--repeats`` runs, model loading excluded:

  end_to_end[workers=W]   embed_to_file over the folder: discovery, parsing in W worker processes
                          (0 = in the main process, no overlap), batching, model, HDF5 write
  parse_only              parsing alone in the main process (what the workers hide)
  model_only              the model on pre-parsed proteins (same batching), no parsing

With overlap, end_to_end approaches max(parse, model) instead of their sum.

    python benchmarks/bench_embed.py [--models small 650M] [--num-files 64] [--num-files-650m 4]
        [--workers 0 1] [--device cpu] [--repeats 3] [--out results.jsonl]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import machine_info, print_header, print_table, write_jsonl  # noqa: E402

from esmgear_fast.embed import embed, embed_to_file  # noqa: E402
from esmgear_fast.inference import discover_inputs, iter_parsed, load_model  # noqa: E402
from esmgear_fast.io.residues import RESIDUE_NAMES, RESIDUE_SYMBOLS  # noqa: E402
from esmgear_fast.testing import real_proteins, real_structure_files  # noqa: E402

MODELS = {
    "small": "esm=random:esm2_t6_8M_UR50D,structure=gearnet,fusion=serial,hidden_dims=[128,128,128]",
    "650M": "esm=random:esm2_t33_650M_UR50D,structure=gearnet,fusion=serial",
}


def write_pdb(protein, path: Path) -> None:
    three = dict(zip(RESIDUE_SYMBOLS, RESIDUE_NAMES))
    lines, serial = [], 1
    for i, aa in enumerate(protein.sequence):
        for a, atom in enumerate(("N", "CA", "C", "O")):
            xyz = protein.backbone[i, a]
            if bool(torch.isnan(xyz).any()):
                continue
            lines.append(f"ATOM  {serial:5d}  {atom:<3s} {three.get(aa, 'UNK'):3s} A{i + 1:4d}    "
                         f"{xyz[0]:8.3f}{xyz[1]:8.3f}{xyz[2]:8.3f}  1.00  0.00           {atom[0]}")
            serial += 1
    path.write_text("\n".join(lines + ["END"]) + "\n")


def make_folder(root: Path, num_files: int) -> Path:
    """Real files first (smallest first when not all fit), then real chains written as PDB, until
    ``num_files`` files. With fewer than 8 files the chains are short ones (for the 650M shape)."""
    folder = root / f"structures{num_files}"
    folder.mkdir()
    real = sorted(real_structure_files(), key=lambda p: p.stat().st_size)
    few = num_files < 8
    real = real[:num_files // 2] if few else real[:num_files]
    for p in real:
        shutil.copy(p, folder / p.name)
    chains = real_proteins(max(0, num_files - len(real)), max_len=200 if few else 600)
    for i, p in enumerate(chains):
        write_pdb(p, folder / f"chain{i:04d}_{p.name}.pdb")
    return folder


def timed(fn, repeats: int):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["small", "650M"], choices=list(MODELS))
    ap.add_argument("--num-files", type=int, default=64)
    ap.add_argument("--num-files-650m", type=int, default=4)
    ap.add_argument("--workers", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--batch-residues", type=int, default=4096)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    info = machine_info(device)
    try:
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    print_header(info, f"load {info.get('load_average_1min')}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.models:
            n = args.num_files if name != "650M" else args.num_files_650m
            folder = make_folder(tmp, n) if not (tmp / f"structures{n}").exists() else tmp / f"structures{n}"
            files = discover_inputs([str(folder)])
            t0 = time.perf_counter()
            model = load_model(MODELS[name], device=device)
            load_s = time.perf_counter() - t0
            proteins = [it.protein for it in iter_parsed(files, workers=0)]
            residues = sum(len(p) for p in proteins)
            common = {"model": name, "spec": MODELS[name], "num_files": len(files), "num_proteins": len(proteins),
                      "num_residues": residues, "batch_residues": args.batch_residues, "model_load_s": load_s}
            by_name = {f"{i}:{p.name}": p for i, p in enumerate(proteins)}
            embed(dict(list(by_name.items())[:2]), model, device=device, precision=args.precision)  # warm-up
            parse_s, _ = timed(lambda: list(iter_parsed(files, workers=0)), args.repeats)
            model_s, _ = timed(lambda: embed(by_name, model, batch_residues=args.batch_residues, device=device,
                                             precision=args.precision), args.repeats)
            for task, seconds in (("parse_only", parse_s), ("model_only", model_s)):
                rows.append({**common, "task": task, "seconds": seconds,
                             "proteins_per_s": len(proteins) / seconds, "residues_per_s": residues / seconds})
            for w in args.workers:
                def run(w=w):
                    out = tmp / "emb.h5"
                    report = embed_to_file([str(folder)], model, out, batch_residues=args.batch_residues,
                                           workers=w, device=device, precision=args.precision, progress=False,
                                           overwrite=True)
                    assert report.num_proteins == len(proteins) and not report.failures, report.failures

                seconds, _ = timed(run, args.repeats)
                rows.append({**common, "task": f"end_to_end[workers={w}]", "seconds": seconds,
                             "proteins_per_s": len(proteins) / seconds, "residues_per_s": residues / seconds,
                             "parse_plus_model_s": parse_s + model_s})
            del model
    print_table(rows, ["model", "task", "num_proteins", "num_residues", "seconds", "proteins_per_s",
                       "residues_per_s"])
    path = write_jsonl(rows, info, "bench_embed", args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
