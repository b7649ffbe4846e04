"""Dataset preparation and reload speed: first parse of an EC-layout folder and cached reload of 20k proteins.

    python benchmarks/bench_datasets.py [--files 2000] [--reload 20000] [--workers 2] [--out FILE]

1. prepare: an EC-layout folder (nrPDB-EC_annot.tsv, nrPDB-EC_test.csv, train/valid/test.zip) whose
   train.zip holds ``--files`` single-chain PDB files, each a copy of one of the real chains of
   tests/data/fixtures/deepfri (chains of 190-327 residues, mean 262, i.e. EC-sized) under a new key.
   Times ``EnzymeCommission(path, workers=N)`` from scratch: reading the zip, parsing in N processes,
   writing the memory-mapped cache. Reports files/s of wall time and files per CPU-second of the parser
   processes (independent of other load on the machine; N cores without other load give N times that).
2. reload: a 20k-entry split cache synthesised from real chains (tests/data/real_ca_chains.npz, 100-600
   residues, cycled) with a matching manifest; in a fresh process, times ``EnzymeCommission(path)``
   (annotation + test-csv parse, cache open) and reads the resident memory (total, private ``RssAnon``,
   mapped file pages ``RssFile``) after import, after loading, after touching 1,000 random items, and
   after touching every item. Mapped file pages are clean page cache shared between processes (e.g.
   DataLoader workers) and reclaimable; the kernel maps them in blocks around each touched range.

The load average of the machine is recorded with each row.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import machine_info, print_header, print_table, write_jsonl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "data" / "fixtures" / "deepfri" / "EnzymeCommission"
EC_SIZED = ["1BD2-A", "1BD2-D", "1BD2-E", "1TRM-A", "3MHT-A", "1H8D-H", "3D5T-C"]
TASKS = ["1.1.1.1", "2.7.11.1", "3.4.21.4"]


def _rss_mb(kind: str = "VmRSS") -> float:
    """Resident memory in MiB: ``VmRSS`` (all), ``RssAnon`` (private heap) or ``RssFile`` (mapped file pages)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(kind + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _mem(tag: str) -> dict:
    return {f"rss_{tag}_mb": _rss_mb(), f"anon_{tag}_mb": _rss_mb("RssAnon"), f"file_{tag}_mb": _rss_mb("RssFile")}


def real_chain_files():
    out = {}
    for split in ("train", "valid", "test"):
        with zipfile.ZipFile(FIXTURE / f"{split}.zip") as zf:
            for name in zf.namelist():
                key = os.path.basename(name).split("_")[0]
                if key in EC_SIZED:
                    out[key] = zf.read(name)
    return [out[k] for k in EC_SIZED]


def write_layout(folder: Path, train_members, annotated_keys, member_bytes=None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "nrPDB-EC_annot.tsv").write_text(
        "### EC-numbers\n" + "\t".join(TASKS) + "\n### PDB-chain\tEC-numbers\n"
        + "".join(f"{k}\t{TASKS[i % 3]}\n" for i, k in enumerate(annotated_keys)))
    (folder / "nrPDB-EC_test.csv").write_text("PDB-chain,<30%,<40%,<50%,<70%,<95%\n")
    with zipfile.ZipFile(folder / "train.zip", "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for i, name in enumerate(train_members):
            zf.writestr(f"train/{name}", member_bytes[i % len(member_bytes)] if member_bytes else b"")
    for split in ("valid", "test"):
        with zipfile.ZipFile(folder / f"{split}.zip", "w") as zf:
            zf.writestr(f"{split}/", b"")


def bench_prepare(n_files: int, workers: int, tmp: Path) -> dict:
    from esmgear_fast.data.datasets import EnzymeCommission

    chains = real_chain_files()
    keys = [f"{i:04d}-A" for i in range(n_files)]
    folder = tmp / "prep" / "EnzymeCommission"
    write_layout(folder, [f"{k}_{i}.pdb" for i, k in enumerate(keys)], keys, chains)
    residues = [int(sum(1 for line in c.decode().splitlines() if line[:6] in ("ATOM  ", "HETATM")
                        and line[12:16].strip() == "CA")) for c in chains]
    load0 = os.getloadavg()[0]
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    ds = EnzymeCommission(folder, workers=workers, progress=False)
    total = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    child_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    self_cpu = (self1.ru_utime - self0.ru_utime) + (self1.ru_stime - self0.ru_stime)
    manifest = json.loads((folder / "esmgear_fast_cache" / "train.manifest.json").read_text())
    assert len(ds) == n_files and not ds.failures
    cpu = child_cpu if workers > 1 else self_cpu
    return {"task": "prepare", "files": n_files, "workers": workers,
            "mean_residues": sum(residues[i % len(residues)] for i in range(n_files)) / n_files,
            "total_s": total, "parse_s": manifest["parse_seconds"], "files_per_s": n_files / total,
            "parse_files_per_s": n_files / manifest["parse_seconds"], "parser_cpu_s": cpu,
            "files_per_cpu_s": n_files / cpu if cpu > 0 else None,
            "loadavg_1min_before": load0, "loadavg_1min_after": os.getloadavg()[0]}


def build_reload_fixture(n: int, tmp: Path) -> Path:
    from esmgear_fast.data.cache import write_cache
    from esmgear_fast.data.datasets import deepfri
    from esmgear_fast.testing import real_proteins

    proteins = real_proteins(min_len=100, max_len=600)
    keys = [f"{i:05d}-A" for i in range(n)]
    members = [f"{k}_{i}.pdb" for i, k in enumerate(keys)]
    folder = tmp / "reload" / "EnzymeCommission"
    write_layout(folder, members, keys)
    entries = []
    for i, key in enumerate(keys):
        p = proteins[i % len(proteins)]
        entries.append({"name": key, "sequence": p.sequence, "backbone": p.backbone.numpy(),
                        "chain_id": p.chain_id.numpy(), "residue_number": p.residue_number.numpy(),
                        "insertion_code": p.insertion_code, "plddt": None, "chain_names": p.chain_names,
                        "num_skipped_residues": 0})
    cache_dir = folder / "esmgear_fast_cache"
    write_cache(entries, cache_dir / "train.pt", [f"train/{m}" for m in members])
    for split, count in (("train", n), ("valid", 0), ("test", 0)):
        source = folder / f"{split}.zip"
        manifest = {"format": deepfri._MANIFEST_FORMAT, "version": deepfri._MANIFEST_VERSION,
                    "fingerprint": deepfri._fingerprint(source), "num_parsed": count, "failures": []}
        (cache_dir / f"{split}.manifest.json").write_text(json.dumps(manifest))
    return folder


def reload_child(folder: str) -> None:
    mem = {}
    from esmgear_fast.data.datasets import EnzymeCommission

    mem.update(_mem("after_import"))
    t0 = time.perf_counter()
    ds = EnzymeCommission(folder, progress=False)
    t_load = time.perf_counter() - t0
    mem.update(_mem("after_load"))
    rng = random.Random(0)
    idx = [rng.randrange(len(ds)) for _ in range(1000)]
    t0 = time.perf_counter()
    residues = sum(len(ds[i]["protein"]) for i in idx)
    t_touch = time.perf_counter() - t0
    mem.update(_mem("after_1000"))
    t0 = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    t_all = time.perf_counter() - t0
    mem.update(_mem("after_all"))
    print(json.dumps({"items": len(ds), "residues_total": int(ds.lengths.sum()), "load_s": t_load,
                      "touch_1000_s": t_touch, "touch_1000_residues": residues, "touch_all_s": t_all, **mem}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--reload", type=int, default=20000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-prepare", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--reload-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.reload_child:
        reload_child(args.reload_child)
        return 0
    torch.set_num_threads(1)
    info = machine_info(torch.device("cpu"))
    info["cpu_threads"] = os.cpu_count()
    print_header(info, f"load average {os.getloadavg()[0]:.1f}")
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_datasets"))
    try:
        if not args.skip_prepare:
            rows.append(bench_prepare(args.files, args.workers, tmp))
        if args.workers != 1 and not args.skip_prepare:
            shutil.rmtree(tmp / "prep")
            rows.append(bench_prepare(args.files, 1, tmp))
        t0 = time.perf_counter()
        folder = build_reload_fixture(args.reload, tmp)
        build_s = time.perf_counter() - t0
        load0 = os.getloadavg()[0]
        proc = subprocess.run([sys.executable, __file__, "--reload-child", str(folder)], capture_output=True,
                              text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if proc.returncode:
            print(proc.stderr, file=sys.stderr)
            return 1
        child = json.loads(proc.stdout.strip().splitlines()[-1])
        cache_mb = (folder / "esmgear_fast_cache" / "train.pt").stat().st_size / 2**20
        rows.append({"task": "reload", "files": args.reload, "cache_mb": cache_mb, "fixture_build_s": build_s,
                     "loadavg_1min_before": load0, **child})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for r in rows:
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}))
    print_table([r for r in rows if r["task"] == "prepare"],
                ["task", "files", "workers", "mean_residues", "total_s", "files_per_s", "files_per_cpu_s",
                 "loadavg_1min_before"])
    path = write_jsonl(rows, info, "bench_datasets", args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
