#!/usr/bin/env bash
# The one GPU script: on the lent GPU machine (Python 3.12, torch + CUDA, nvcc, no network) it builds the
# extension for sm_90, runs the CUDA tests and the GPU benchmarks, and writes a report under $OUT.
#
# Here first:   bash benchmarks/gpu_prepare.sh          (golden data, audio, wheels -> .gpu_carry/)
# Then device:  run(command="bash benchmarks/gpu_check.sh", carry=[".gpu_carry"], timeout_s=540)
# Afterwards:   copy $OUT's report.md / *.json into benchmarks/results/ and commit them.
#
# Sections are time-boxed (SECTION_TIMEOUT seconds each, E2E_TIMEOUT for the end-to-end run) so one slow part
# cannot eat the lease; a section that times out or fails is reported as such and the script goes on.
# The device returns at most 8 files from $OUT: the report, the JSON results and logs.tgz (every log) come back.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/paraformer_ext_gpu}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
SECTION_TIMEOUT=${SECTION_TIMEOUT:-150}
export PYTHONUNBUFFERED=1
export PARAFORMER_EXT_SHARED=${PARAFORMER_EXT_SHARED:-$PWD/.gpu_carry/shared}
export PARAFORMER_EXT_CACHE=${PARAFORMER_EXT_CACHE:-$PWD/.gpu_carry/cache}
PY=${PY:-python3}
T0=$(date +%s)
stamp() { echo "=== [$(( $(date +%s) - T0 )) s] $*"; }

if ls .gpu_carry/whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu_carry/whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

stamp "environment"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null
  $PY -c "import torch, sys; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"
  nvcc --version 2>/dev/null | tail -1
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown) $(git status --porcelain 2>/dev/null | grep -q . && echo '(dirty)')"
} | tee "$OUT/env.txt"

stamp "build (TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:=9.0})"
export TORCH_CUDA_ARCH_LIST
t=$(date +%s)
if ! $PY -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1; then
  tail -60 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
echo "build: $(( $(date +%s) - t )) s" | tee -a "$OUT/env.txt"
$PY -c "import json, paraformer_ext as p; print(json.dumps(p.build_info()))" | tee "$OUT/build_info.json"
$PY -c "import paraformer_ext as p, sys; sys.exit(0 if p.build_info()['cuda'] else 1)" || { echo "CUDA kernels were not built"; exit 1; }

section() {  # name, then the command
  local name=$1; shift
  stamp "$name"
  timeout "$SECTION_TIMEOUT" "$@"
  local rc=$?
  echo "$name: rc=$rc" >> "$OUT/sections.txt"
  [ $rc -eq 124 ] && echo "$name: TIMED OUT after $SECTION_TIMEOUT s"
  return 0
}

# CUDA tests: every test parametrized over devices runs its cuda case; the golden parity runs on cuda.
section tests $PY -m pytest tests -q -x -k "cuda" -p no:cacheprovider --junitxml="$OUT/tests_cuda.xml" -o addopts="-ra"

# Benchmarks (CUDA cases only), each file into its own JSON.
for b in bench_fsmn_sanm:bench_sanm.py bench_cif:bench_cif.py bench_int8:bench_int8.py bench_out_proj:bench_out_proj.py bench_e2e:bench_e2e.py bench_vad:bench_vad.py; do
  name=${b%%:*}; file=benchmarks/${b#*:}
  [ -f "$file" ] || continue
  section "$name" $PY -m pytest "$file" -q --benchmark-only -k "cuda" -p no:cacheprovider \
    --benchmark-json="$OUT/$name.json" -o addopts=""
done

# End to end, large preset (benchmarks/e2e.py): 2 hours of audio arrays (30,000x real time is 0.24 s), the
# one-by-one fp32 reference on a 20-minute prefix of it; E2E_ARGS replaces the workload and system options.
E2E_ARGS=${E2E_ARGS:---total-s 7200 --ref-max-s 1200 --repeat 3}
# shellcheck disable=SC2086
SECTION_TIMEOUT=${E2E_TIMEOUT:-240} section e2e_cuda $PY benchmarks/e2e.py --device cuda --preset large $E2E_ARGS \
  --time-budget-s $(( ${E2E_TIMEOUT:-240} - 20 )) --json "$OUT/e2e_cuda.json"

stamp "report"
{
  echo "# GPU check"
  echo
  echo '```'
  cat "$OUT/env.txt"
  echo '```'
  echo
  echo "Command: \`bash benchmarks/gpu_check.sh\` (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
  echo
  echo "## Sections"
  echo '```'
  cat "$OUT/sections.txt" 2>/dev/null
  echo '```'
  for j in "$OUT"/bench_*.json; do
    [ -f "$j" ] || continue
    echo
    echo "## $(basename "$j" .json)"
    echo
    $PY benchmarks/summarize.py "$j" --markdown | tail -n +2
  done
  if [ -f "$OUT/e2e_cuda.json" ]; then
    echo
    echo "## End to end (benchmarks/e2e.py, large preset)"
    echo
    $PY benchmarks/e2e.py --show "$OUT/e2e_cuda.json" --markdown
  fi
} > "$OUT/report.md"
cat "$OUT/report.md"
stamp "done"
(cd "$OUT" && tar czf logs.tgz --ignore-failed-read log.txt env.txt build.log build_info.json sections.txt tests_cuda.xml 2>/dev/null \
  && rm -f log.txt env.txt build.log build_info.json sections.txt tests_cuda.xml)
