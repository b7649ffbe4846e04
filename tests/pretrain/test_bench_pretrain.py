"""benchmarks/bench_pretrain.py runs end to end at tiny sizes and writes well-formed JSON lines."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_pretrain_smoke(tmp_path):
    out = tmp_path / "bench.jsonl"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_pretrain.py"), "--esm", "random:tiny", "--hidden", "16",
         "--batch-size", "2", "--methods", "distance", "--repeats", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["variant"] for r in rows} == {"frozen_esm", "esm_autograd_fp32"}
    by = {r["variant"]: r for r in rows}
    for r in rows:
        assert r["median_ms"] > 0 and r["proteins_per_s"] > 0 and r["torch"] and r["cpu"]
    # freezing ESM removes its parameters from the optimiser and its activations from the graph
    assert by["frozen_esm"]["trainable_params"] < by["esm_autograd_fp32"]["trainable_params"]
    assert by["frozen_esm"]["saved_for_backward_mb"] < by["esm_autograd_fp32"]["saved_for_backward_mb"]
