#!/usr/bin/env bash
# Compile every csrc/*.cu to an object file for sm_90 with nvcc against the installed torch's headers.
# Works on a machine without a GPU and with a CPU-only torch (the wheel ships the CUDA headers): it catches
# compile errors in CUDA code early. It does not link or run anything; benchmarks/gpu_check.sh does that.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
NVCC=${NVCC:-$(command -v nvcc || true)}
if [ -z "$NVCC" ]; then echo "nvcc not found: nothing to check"; exit 0; fi
INC=$("$PY" -c "from torch.utils.cpp_extension import include_paths; print(' '.join('-I'+p for p in include_paths()))")
PYINC=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
PBINC=$("$PY" -c "import pybind11; print(pybind11.get_include())")
out=$(mktemp -d)
# A CPU-only torch wheel lacks this one generated header of c10/cuda; supply the CUDA build's content.
mkdir -p "$out/inc/c10/cuda/impl"
printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > "$out/inc/c10/cuda/impl/cuda_cmake_macros.h"
status=0
for f in csrc/*.cu; do
  [ -e "$f" ] || continue
  if "$NVCC" -std=c++20 -O3 -arch=sm_90 -c "$f" -o "$out/$(basename "$f").o" -Icsrc $INC -I"$out/inc" -I"$PYINC" -I"$PBINC" \
      --expt-relaxed-constexpr -Xcompiler -fPIC -DPARAFORMER_EXT_WITH_CUDA=1 \
      -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
      -D__CUDA_NO_HALF2_OPERATORS__ ${EXTRA_NVCC_FLAGS:-}; then
    echo "ok   $f"
  else
    echo "FAIL $f"; status=1
  fi
done
rm -rf "$out"
exit $status
