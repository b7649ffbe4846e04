"""benchmarks/bench_cdconv.py runs end to end (smallest settings) and writes well-formed JSON lines."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_cdconv_smoke(tmp_path):
    out = tmp_path / "bench.jsonl"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_cdconv.py"), "--quick", "--tasks", "layer_s4",
         "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r["mode"], r["impl"]) for r in rows} == {(m, i) for m in ("fwd", "fwd+bwd") for i in ("auto", "reference")}
    for r in rows:
        assert r["task"] == "layer_s4" and r["proteins"] == 2 and r["width"] == 512 and r["radius"] == 20.0
        assert r["median_ms"] > 0 and r["speedup_vs_reference"] > 0 and r["torch"] and r["cpu"]
        assert r["max_protein"] >= 1000          # the batch holds a real complex of >= 1000 residues
        assert r["peak_mem_mb"] >= 0
    assert "speedup_vs_reference" in proc.stdout
