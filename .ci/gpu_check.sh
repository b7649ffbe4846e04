#!/usr/bin/env bash
# One call on a lent GPU machine (device tool): build the CUDA kernels, run the tests (the CUDA
# parametrisations switch on when a GPU is visible) and the benchmarks, leaving logs and JSON lines
# in $OUT (or ./gpu_results). That machine has no internet: wheels for missing packages travel in
# .whl/ (see the device README), e.g. biopython and an sdist-built torch_cluster for the peer rows.
#   run: bash .ci/gpu_check.sh        (carry: [".whl"] when wheels are needed)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_results}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
FORCE_CUDA=1 MAX_JOBS=16 python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -20 | tee "$out/build.log"
PYTHONUNBUFFERED=1 python3 -m pytest -q tests/ops tests/nn tests/test_extension.py 2>&1 | tee "$out/tests.log" | tail -30
PYTHONUNBUFFERED=1 python3 benchmarks/bench_graph.py --device cuda --out "$out/bench_graph-gpu.jsonl" 2>&1 | tee "$out/bench_graph.log"
