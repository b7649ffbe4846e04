"""The benchmark scripts run end to end (tiny sizes) and write well-formed JSON lines."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_graph_smoke(tmp_path):
    out = tmp_path / "bench.jsonl"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_graph.py"), "--sizes", "2", "--repeats", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    impls = {(r["task"], r["impl"]) for r in rows}
    assert {("radius+knn", "extension"), ("radius+knn", "extension_fused"), ("radius+knn", "reference"),
            ("gearnet_graph", "extension"), ("gearnet_graph", "reference")} <= impls
    for r in rows:
        assert r["median_ms"] > 0 and r["torch"] and r["cpu"] and r["proteins"] == 2
        if r["impl"].startswith("extension"):
            assert r["speedup_vs_reference"] > 0
    assert "speedup_vs_reference" in proc.stdout


def test_bench_datasets_smoke(tmp_path):
    out = tmp_path / "bench.jsonl"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_datasets.py"), "--files", "12", "--reload", "100",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    prepare = [r for r in rows if r["task"] == "prepare"]
    reload = [r for r in rows if r["task"] == "reload"]
    assert prepare and all(r["files"] == 12 and r["files_per_s"] > 0 for r in prepare)
    assert len(reload) == 1 and reload[0]["items"] == 100 and reload[0]["load_s"] > 0
