"""benchmarks/bench_fusion.py runs end to end at tiny sizes and writes well-formed JSON lines."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_fusion_smoke(tmp_path):
    out = tmp_path / "bench.jsonl"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_fusion.py"), "--models", "tiny", "--batch-sizes", "2",
         "--widths", "16", "16", "--repeats", "1", "--warmup", "0", "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r["part"], r["impl"]) for r in rows} == {(p, i) for p in ("step", "esm", "graph", "structure", "head",
                                                                       "optimizer") for i in ("ours", "reference")}
    for r in rows:
        assert r["median_ms"] > 0 and r["batch_size"] == 2 and r["model"] == "tiny" and r["speedup_vs_reference"] > 0
        if r["part"] == "step":
            assert r["proteins_per_s"] > 0
            assert r["max_rel_diff_vs_reference"] < 1e-4  # both paths compute the same model
    assert "speedup_vs_reference" in proc.stdout
