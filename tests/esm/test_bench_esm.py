"""benchmarks/bench_esm.py runs end to end (tiny model) and writes well-formed JSON lines."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_bench_esm_smoke(tmp_path):
    pytest.importorskip("esm")
    out = tmp_path / "bench.jsonl"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_esm.py"), "--models", "tiny", "--batch-sizes", "2",
         "--repeats", "1", "--warmup", "0", "--max-len", "120", "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    impls = {(r["task"], r["impl"]) for r in rows}
    assert {("forward", "fair_esm"), ("forward", "ours-loop"), ("train", "ours-padded")} <= impls
    for r in rows:
        assert r["benchmark"] == "bench_esm" and r["median_ms"] > 0 and r["tokens_per_s"] > 0
        assert r["speedup_vs_fair_esm"] > 0 and r["residues"] > 0 and r["torch"]
    assert "speedup_vs_fair_esm" in proc.stdout
