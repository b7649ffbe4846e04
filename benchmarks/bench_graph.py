"""Benchmark: GearNet graph construction on batches of real proteins.

Two tasks, each at batch sizes 1, 8, 32, 128 proteins:
  radius+knn     the two neighbour queries alone (radius 10 A cap 32, kNN 10)
  gearnet_graph  the full graph: sequential (+-2) + radius + kNN, with TorchDrug's filters
Implementations: `extension` (C++ / CUDA kernels; for radius+knn both the two separate ops and
`extension_fused`, the one-scan `radius_knn_graph` that GearNetGraph uses), `reference` (plain
PyTorch), and `torch_cluster` (what TorchDrug calls) when it is installed. Ratios are speed-ups
measured in the same run, against the reference and against torch_cluster.

    python benchmarks/bench_graph.py [--device cuda] [--sizes 1 8 32 128] [--out results.jsonl]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import machine_info, measure, print_header, print_table, spread_batch, write_jsonl  # noqa: E402

from esmgear_fast import ops  # noqa: E402
from esmgear_fast.nn import gearnet_graph  # noqa: E402
from esmgear_fast.testing import real_proteins, torchdrug_style_graph  # noqa: E402

RADIUS, CAP, K = 10.0, 32, 10


def implementations(batch, device):
    pos, b, chain = batch.pos, batch.batch, batch.chain_id
    impls = {
        "radius+knn": {
            backend: (lambda be=backend: (ops.radius_graph(pos, RADIUS, b, CAP, backend=be),
                                          ops.knn_graph(pos, K, b, backend=be)))
            for backend in ("extension", "reference")
        },
        "gearnet_graph": {
            backend: (lambda be=backend: gearnet_graph(pos, b, chain, backend=be))
            for backend in ("extension", "reference")
        },
    }
    impls["radius+knn"]["extension_fused"] = lambda: ops.radius_knn_graph(pos, RADIUS, K, b, CAP, backend="extension")
    try:
        import torch_cluster
    except ImportError:
        return impls
    impls["radius+knn"]["torch_cluster"] = lambda: (
        torch_cluster.radius_graph(pos, RADIUS, b, max_num_neighbors=CAP),
        torch_cluster.knn_graph(pos, K, b),
    )
    impls["gearnet_graph"]["torch_cluster"] = lambda: torchdrug_style_graph(
        pos, b, chain,
        radius_fn=lambda p, r, bt, cap: torch_cluster.radius_graph(p, r, bt, max_num_neighbors=cap),
        knn_fn=lambda p, k, bt: torch_cluster.knn_graph(p, k, bt),
    )
    return impls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", default=None, help="JSON-lines file (default: benchmarks/results/)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    proteins = real_proteins(min_len=50, max_len=1200)
    info = machine_info(device)
    print_header(info, f"{len(proteins)} real proteins available")
    rows = []
    for size in args.sizes:
        batch = spread_batch(proteins, size, device)
        for task, impls in implementations(batch, device).items():
            res = measure(impls, device, repeats=args.repeats)
            for name, r in res.items():
                row = {"task": task, "impl": name, "proteins": size, "residues": batch.num_nodes, **r}
                if name.startswith("extension"):
                    row["speedup_vs_reference"] = res["reference"]["median_ms"] / r["median_ms"]
                    if "torch_cluster" in res:
                        row["speedup_vs_torch_cluster"] = res["torch_cluster"]["median_ms"] / r["median_ms"]
                rows.append(row)
    columns = ["task", "proteins", "residues", "impl", "median_ms", "speedup_vs_reference", "speedup_vs_torch_cluster"]
    if device.type == "cuda":
        columns.append("peak_mem_mb")
    print_table(rows, columns)
    path = write_jsonl(rows, info, "bench_graph", args.out)
    print(f"# results appended to {path}")


if __name__ == "__main__":
    main()
