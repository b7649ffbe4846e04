#!/usr/bin/env bash
# Compile-only check of the CUDA kernels (csrc/cuda/*.cu) on a machine without a GPU.
#
# The CPU build of torch lacks generated CUDA headers (c10/cuda/impl/cuda_cmake_macros.h, ...), so
# this compiles against the headers of torch's CUDA wheel of the same version, downloaded once and
# cached in .cuda_headers/torch-<version>/ (git-ignored). Objects go to a temp dir and are dropped;
# nothing is linked. Run from anywhere: bash .ci/compile_cuda.sh
#
# Environment: PYTHON (default python), NVCC (default nvcc, else $CUDA_HOME/bin/nvcc),
# CUDA_HEADERS_DIR (cache dir to use instead of .cuda_headers/torch-<version>),
# TORCH_WHEEL_PLATFORM (default manylinux_2_28_x86_64).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
START=$SECONDS

if [[ -z "${NVCC:-}" ]]; then
  if command -v nvcc >/dev/null; then NVCC=nvcc
  elif [[ -n "${CUDA_HOME:-}" && -x "$CUDA_HOME/bin/nvcc" ]]; then NVCC="$CUDA_HOME/bin/nvcc"
  else echo "compile_cuda: nvcc not found (set NVCC or CUDA_HOME)" >&2; exit 1
  fi
fi

read -r TORCH_VERSION CXX11_ABI PY_VERSION PY_INCLUDE < <("$PYTHON" - <<'PY'
import sys, sysconfig, torch
print(torch.__version__.split("+")[0], int(torch._C._GLIBCXX_USE_CXX11_ABI),
      f"{sys.version_info.major}.{sys.version_info.minor}", sysconfig.get_paths()["include"])
PY
)

HEADERS="${CUDA_HEADERS_DIR:-$ROOT/.cuda_headers/torch-$TORCH_VERSION}"
INCLUDE="$HEADERS/torch/include"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# The marker is a header only the CUDA build ships; a half-extracted cache never gets the final name.
if [[ ! -f "$INCLUDE/c10/cuda/impl/cuda_cmake_macros.h" ]]; then
  echo "compile_cuda: fetching the CUDA headers of torch $TORCH_VERSION into $HEADERS"
  # --isolated: ignore pip config and PIP_* variables, whose find-links would pick the local CPU wheel.
  "$PYTHON" -m pip download --isolated --disable-pip-version-check --quiet --no-deps --only-binary=:all: \
    --python-version "$PY_VERSION" --platform "${TORCH_WHEEL_PLATFORM:-manylinux_2_28_x86_64}" \
    "torch==$TORCH_VERSION" -d "$WORK/wheel"
  mkdir -p "$(dirname "$HEADERS")"
  STAGE="$(mktemp -d "$(dirname "$HEADERS")/.extract.XXXXXX")"
  "$PYTHON" - "$WORK"/wheel/torch-*.whl "$STAGE" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as whl:
    whl.extractall(sys.argv[2], [m for m in whl.namelist() if m.startswith("torch/include/")])
PY
  rm -rf "$WORK/wheel"
  [[ -f "$STAGE/torch/include/c10/cuda/impl/cuda_cmake_macros.h" ]] || {
    echo "compile_cuda: the downloaded torch wheel has no CUDA headers (CPU-only wheel?)" >&2
    rm -rf "$STAGE"; exit 1; }
  rm -rf "$HEADERS"
  mv -T "$STAGE" "$HEADERS" 2>/dev/null || rm -rf "$STAGE"  # lost a race to a parallel run: fine
  echo "compile_cuda: headers ready after $(( SECONDS - START ))s"
fi

# What torch.utils.cpp_extension and setup.py pass for a CUDAExtension named esmgear_fast._C.
FLAGS=(
  -std=c++17 -O3 -lineinfo --expt-relaxed-constexpr -Xcompiler -fPIC --threads 2
  -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
  -DWITH_CUDA -DTORCH_API_INCLUDE_EXTENSION_H -DTORCH_EXTENSION_NAME=_C
  "-D_GLIBCXX_USE_CXX11_ABI=$CXX11_ABI"
  -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
  -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__
  -I "$INCLUDE" -I "$INCLUDE/torch/csrc/api/include" -I "$ROOT/csrc/include" -I "$PY_INCLUDE"
)

shopt -s nullglob
SOURCES=("$ROOT"/csrc/cuda/*.cu)
if (( ${#SOURCES[@]} == 0 )); then
  echo "compile_cuda: no csrc/cuda/*.cu files" >&2; exit 1
fi
FAILED=()
for src in "${SOURCES[@]}"; do
  name="$(basename "$src" .cu)"
  if ! "$NVCC" -c "$src" -o "$WORK/$name.o" "${FLAGS[@]}" >"$WORK/$name.log" 2>&1; then
    echo "compile_cuda: FAILED ${src#"$ROOT/"}" >&2
    cat "$WORK/$name.log" >&2
    FAILED+=("${src#"$ROOT/"}")
  fi
done

NVCC_VERSION="$("$NVCC" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')"
SUMMARY="$(( ${#SOURCES[@]} - ${#FAILED[@]} ))/${#SOURCES[@]} CUDA files compiled (torch $TORCH_VERSION CUDA headers, nvcc $NVCC_VERSION, sm_80+sm_90) in $(( SECONDS - START ))s"
if (( ${#FAILED[@]} > 0 )); then
  echo "compile_cuda: $SUMMARY; failed: ${FAILED[*]}" >&2
  exit 1
fi
echo "compile_cuda: $SUMMARY"
