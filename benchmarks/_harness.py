"""Shared benchmark harness: side-by-side medians, machine info, table + JSON lines.

Implementations of one task are timed alternately (round-robin) in the same process, so drift in
the machine's speed affects them equally; the figure reported is the median over repeats.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from datetime import datetime, timezone
from typing import Callable, Dict, List, Optional

import torch

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def machine_info(device: torch.device) -> Dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except OSError:
        commit = None
    info = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu,
        "cpu_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def machine_tag(info: Dict[str, object]) -> str:
    name = str(info.get("gpu") or f"cpu{info['cpu_threads']}")
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").lower()


def spread_batch(proteins: List, size: int, device: torch.device):
    """A packed batch of `size` proteins taken at even steps over `proteins` (deterministic)."""
    from esmgear_fast.data import collate

    step = max(1, len(proteins) // size)
    return collate([proteins[(i * step) % len(proteins)] for i in range(size)]).to(device)


def print_header(info: Dict[str, object], extra: str = "") -> None:
    print(f"# {info['cpu']} | {info.get('gpu', 'no GPU')} | torch {info['torch']} | "
          f"{info['cpu_threads']} threads" + (f" | {extra}" if extra else ""))


def measure(fns: Dict[str, Callable[[], object]], device: torch.device, repeats: int = 20,
            warmup: int = 3, min_seconds: float = 0.0) -> Dict[str, Dict[str, float]]:
    """Median wall time (ms) of each callable, measured round-robin; peak GPU memory when on CUDA."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync()
    times: Dict[str, List[float]] = {name: [] for name in fns}
    peak: Dict[str, int] = {name: 0 for name in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < repeats or time.perf_counter() - start < min_seconds:
        for name, fn in fns.items():
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append((time.perf_counter() - t0) * 1e3)
            if cuda:
                peak[name] = max(peak[name], torch.cuda.max_memory_allocated(device) - base)
        rounds += 1
    out = {}
    for name in fns:
        out[name] = {"median_ms": statistics.median(times[name]), "repeats": len(times[name])}
        if cuda:
            out[name]["peak_mem_mb"] = peak[name] / 2**20
    return out


def print_table(rows: List[Dict[str, object]], columns: List[str]) -> None:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
        return "-" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def write_jsonl(rows: List[Dict[str, object]], info: Dict[str, object], name: str,
                path: Optional[str] = None) -> str:
    path = path or os.path.join(RESULTS_DIR, f"{name}-{machine_tag(info)}.jsonl")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps({"benchmark": name, **info, **row}) + "\n")
    return path
