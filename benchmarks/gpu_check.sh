#!/usr/bin/env bash
# The one GPU script: on the lent GPU machine (Python 3.12, torch + CUDA, nvcc, no network) it builds the
# extension for sm_90, runs the CUDA tests and the GPU benchmarks, and writes a report under $OUT.
#
# Here first:   bash benchmarks/gpu_prepare.sh          (golden data, audio, wheels -> .gpu_carry/)
# Then device:  run(command="bash benchmarks/gpu_check.sh", carry=[".gpu_carry"], timeout_s=480)
# Afterwards:   copy $OUT's report.md / *.json into benchmarks/results/ and commit them.
#
# Sections are time-boxed (each its own limit, and all of them within TOTAL_BUDGET seconds from the start, 420 by
# default: the lease is 15 minutes with start-up, and a rerun must fit) and run in order of what matters most
# (the CUDA tests first: correctness before speed); a section that times out, fails or finds no time left is
# reported as such and the script goes on to write the report.
# The device returns at most 8 files from $OUT: the report, the JSON results and logs.tgz (every log) come back.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/paraformer_ext_gpu}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
TOTAL_BUDGET=${TOTAL_BUDGET:-420}
export PYTHONUNBUFFERED=1
export PARAFORMER_EXT_SHARED=${PARAFORMER_EXT_SHARED:-$PWD/.gpu_carry/shared}
export PARAFORMER_EXT_CACHE=${PARAFORMER_EXT_CACHE:-$PWD/.gpu_carry/cache}
PY=${PY:-python3}
T0=$(date +%s)
stamp() { echo "=== [$(( $(date +%s) - T0 )) s] $*"; }

# The carried wheels, only for what the image lacks (its own numpy etc. stay in charge).
missing=$($PY - <<'PYEOF'
import glob, importlib.util, os
mod = {"pyyaml": "yaml"}
for w in sorted(glob.glob(".gpu_carry/whl/*.whl")):
    name = os.path.basename(w).split("-")[0].lower()
    if importlib.util.find_spec(mod.get(name, name)) is None:
        print(w)
PYEOF
)
if [ -n "$missing" ]; then
  # shellcheck disable=SC2086
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $missing \
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

left_s() { echo $(( TOTAL_BUDGET - ($(date +%s) - T0) )); }
section() {  # name, limit in seconds, then the command; the limit shrinks to what is left of TOTAL_BUDGET
  local name=$1 limit=$2; shift 2
  if [ -n "${GPU_SECTIONS:-}" ] && [[ " $GPU_SECTIONS " != *" $name "* ]]; then
    echo "$name: not selected (GPU_SECTIONS=$GPU_SECTIONS)" >> "$OUT/sections.txt"
    return 0
  fi
  local left; left=$(left_s)
  if [ "$left" -lt 15 ]; then
    echo "$name: SKIPPED (no time left of TOTAL_BUDGET=$TOTAL_BUDGET s)" | tee -a "$OUT/sections.txt"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  stamp "$name (limit $limit s)"
  local t=$(date +%s)
  timeout "$limit" "$@"
  local rc=$?
  echo "$name: rc=$rc in $(( $(date +%s) - t )) s$([ $rc -eq 124 ] && echo " (TIMED OUT after $limit s)")" >> "$OUT/sections.txt"
  return 0
}
bench() {  # name, limit, file: the file's CUDA cases into $OUT/<name>.json
  [ -f "benchmarks/$3" ] || return 0
  section "$1" "$2" $PY -m pytest "benchmarks/$3" -q --benchmark-only -k "cuda" -p no:cacheprovider \
    --benchmark-json="$OUT/$1.json" -o addopts=""
}

# 0. Bad inputs to every CUDA op must raise, not crash (the first H200 run crashed on one); a crash gets a
# backtrace from cuda-gdb (no gdb on that image) of its case run alone.
section bad_inputs 30 $PY benchmarks/cuda_bad_inputs.py --json "$OUT/bad_inputs.json"
first_crash=$($PY -c "import json,sys; r=[x['case'] for x in json.load(open(sys.argv[1]))['rows'] if x['outcome']=='CRASHED']; print(r[0] if r else '')" "$OUT/bad_inputs.json" 2>/dev/null)
if [ -n "$first_crash" ] && command -v cuda-gdb >/dev/null; then
  section crash_backtrace 45 cuda-gdb -batch -ex run -ex bt -ex "info sharedlibrary" \
    --args $PY benchmarks/cuda_bad_inputs.py --only "$first_crash"
fi

# 1. CUDA tests: every test parametrized over devices runs its cuda case; the golden parity runs on cuda.
# --continue-on-collection-errors: a module that cannot load (missing data) must not cancel every other test.
# A test that crashes the interpreter (it must not: that is a bug to fix) would end the run; the crashed test's
# function is named from the faulthandler trace, reported, and the run resumes without it (3 times at most).
tests_k="cuda"
for attempt in 1 2 3; do
  mark=$(( $(cat "$OUT/log.txt" 2>/dev/null | wc -l) + 1 ))
  section tests 150 $PY -m pytest tests -q -k "$tests_k" -p no:cacheprovider --continue-on-collection-errors \
    --junitxml="$OUT/tests_cuda_$attempt.xml" -o addopts="-ra"
  crashed=$(tail -n +"$mark" "$OUT/log.txt" | sed -n '/^Fatal Python error/,$p' \
    | grep -m1 -oE 'tests/test_[a-z0-9_]+\.py", line [0-9]+ in test_[A-Za-z0-9_]+' || true)
  [ -z "$crashed" ] && break
  echo "tests: CRASHED in $crashed; again without ${crashed##* in }" | tee -a "$OUT/sections.txt"
  tests_k="$tests_k and not ${crashed##* in }"
done

# 1b. The launch floor: what one kernel launch costs here (every small-batch number below sits on it).
section cuda_launch 20 $PY benchmarks/cuda_launch.py --json "$OUT/cuda_launch.json"

# 2. Kernel benchmarks (CUDA cases only; bandwidth vs the device-to-device copy of the same run).
bench bench_cif 45 bench_cif.py
bench bench_fsmn_sanm 150 bench_sanm.py
bench bench_int8 30 bench_int8.py
bench bench_out_proj 45 bench_out_proj.py

# 3. End to end, large preset (benchmarks/e2e.py): 2 hours of audio arrays (30,000x real time is 0.24 s), the
# one-by-one fp32 reference on a 2-minute prefix of it (it runs at ~40x real time on an H200: launch-bound);
# --max-system-s 0: the warm-up (3 utterances, one-time CUDA costs in it) says nothing of a batched pass's time,
# so no system is skipped on its estimate; --time-budget-s bounds the section. E2E_ARGS replaces these options.
E2E_ARGS=${E2E_ARGS:---total-s 7200 --ref-max-s 120 --repeat 3 --max-system-s 0}
E2E_TIMEOUT=${E2E_TIMEOUT:-120}
e2e_limit=$(left_s); [ "$e2e_limit" -gt "$E2E_TIMEOUT" ] && e2e_limit=$E2E_TIMEOUT
# shellcheck disable=SC2086
section e2e_cuda "$e2e_limit" $PY benchmarks/e2e.py --device cuda --preset large $E2E_ARGS \
  --time-budget-s $(( e2e_limit > 30 ? e2e_limit - 15 : 15 )) --json "$OUT/e2e_cuda.json"

# 4. int8 vs fp16 (accuracy, speed, memory), half-precision accuracy, long audio, VAD.
section int8_report 60 $PY benchmarks/int8_report.py --device cuda --repeat 5 --json "$OUT/int8_cuda.json"
section precision 45 $PY benchmarks/precision.py --device cuda --quantize int8 --json "$OUT/precision_cuda.json"
section long_audio 60 $PY benchmarks/bench_long_audio.py --preset large --minutes 10 180 --device cuda --dtype float16 \
  --out "$OUT/long_audio_cuda.json"
bench bench_vad 20 bench_vad.py

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
  for x in "$OUT"/tests_cuda_*.xml; do
    [ -f "$x" ] || continue
    echo
    echo "## CUDA tests ($(basename "$x" .xml))"
    echo
    echo '```'
    $PY - "$x" <<'PYEOF'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else list(root)
n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
print(" ".join(f"{k}={v}" for k, v in n.items()))
for case in root.iter("testcase"):
    for bad in list(case.findall("failure")) + list(case.findall("error")):
        print(f"{bad.tag.upper()} {case.get('classname')}::{case.get('name')}: {(bad.get('message') or '')[:300]}")
PYEOF
    echo '```'
  done
  if [ -f "$OUT/bad_inputs.json" ]; then
    echo
    echo "## Bad inputs on CUDA (benchmarks/cuda_bad_inputs.py)"
    echo
    echo '```'
    $PY -c "import json,sys; [print(f\"{r['outcome']:12s} {r['case']:36s} {r['message'][:120]}\") for r in json.load(open(sys.argv[1]))['rows']]" "$OUT/bad_inputs.json"
    echo '```'
  fi
  if [ -f "$OUT/cuda_launch.json" ]; then
    echo
    echo "## Launch floor (benchmarks/cuda_launch.py, us per call)"
    echo
    echo '```'
    $PY -c "import json,sys; [print(f'{k:16s} {v}') for k, v in json.load(open(sys.argv[1]))['us_per_call'].items()]" "$OUT/cuda_launch.json"
    echo '```'
  fi
  for j in "$OUT"/bench_*.json; do
    [ -s "$j" ] || continue
    echo
    echo "## $(basename "$j" .json)"
    echo
    $PY benchmarks/summarize.py "$j" --markdown | tail -n +2
  done
  for j in int8_cuda precision_cuda long_audio_cuda; do
    [ -f "$OUT/$j.json" ] || continue
    echo
    echo "## $j (full file in logs.tgz / $j.json)"
    echo
    echo '```'
    $PY -c "import json,sys; d=json.load(open(sys.argv[1])); [print(json.dumps(r)) for k in ('speed','memory','rows','results') for r in (d.get(k) if isinstance(d.get(k), list) else [d.get(k)] if d.get(k) else [])]" "$OUT/$j.json" | cut -c1-400
    echo '```'
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
# At most 8 files come back: report.md, logs.tgz and the JSON results; small JSONs go into the tarball too.
(cd "$OUT" && tar czf logs.tgz --ignore-failed-read log.txt env.txt build.log build_info.json sections.txt tests_cuda_*.xml \
  bench_vad.json precision_cuda.json long_audio_cuda.json cuda_launch.json bad_inputs.json 2>/dev/null \
  && rm -f log.txt env.txt build.log build_info.json sections.txt tests_cuda_*.xml bench_vad.json precision_cuda.json \
    long_audio_cuda.json cuda_launch.json bad_inputs.json)
