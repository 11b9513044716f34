#!/usr/bin/env bash
# The anchors' environment: FunASR's own CPU deployment beside ours, on the same random-weight checkpoint.
#
#   bash benchmarks/anchors/setup.sh        # idempotent: every step is skipped when its result exists
#
# 1. a separate virtual environment, benchmarks/anchors/.venv (ANCHORS_VENV), with funasr 1.4.16, funasr-onnx
#    0.4.3, onnxruntime, onnx and torch 2.13.0 CPU (pinned by a constraints file, so nothing pulls a CUDA torch);
# 2. the `large` golden checkpoint (../shared/golden/make_checkpoint.py --verify) in benchmarks/anchors/work/large
#    (ANCHORS_WORK);
# 3. FunASR's own ONNX export of it (export_onnx.py: AutoModel.export(type="onnx", quantize=True)), which writes
#    model.onnx (fp32) and model_quant.onnx (MatMul weights dynamically quantized to uint8 per channel) into the
#    checkpoint directory, where funasr_onnx.Paraformer looks for them (about a minute and 6 GB of memory).
#
# Then, with the project's own .venv: benchmarks/anchors/cpu_vs_onnx.py and benchmarks/bench_train.py.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
VENV=${ANCHORS_VENV:-$HERE/.venv}
WORK=${ANCHORS_WORK:-$HERE/work}
SHARED=${PARAFORMER_EXT_SHARED:-$REPO/../shared}
PY=${PYTHON:-python3}
CKPT=$WORK/large

say() { echo "[anchors setup] $*"; }
die() { echo "[anchors setup] ERROR: $*" >&2; exit 1; }

[ -f "$SHARED/golden/make_checkpoint.py" ] || die "no $SHARED/golden/make_checkpoint.py (set PARAFORMER_EXT_SHARED to the shared folder)"

# --- 1. the environment ----------------------------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $($PY --version 2>&1)"
  "$PY" -m venv "$VENV"
else
  say "venv $VENV exists"
fi
CONSTRAINTS=$WORK/constraints.txt
mkdir -p "$WORK"
printf 'torch==2.13.0\nfunasr==1.4.16\nfunasr-onnx==0.4.3\nnumpy<=1.26.4\n' > "$CONSTRAINTS"
if "$VENV/bin/python" - <<'EOF' 2>/dev/null
import importlib.metadata as m
want = {"funasr": "1.4.16", "funasr-onnx": "0.4.3"}
assert all(m.version(k) == v for k, v in want.items()), "versions"
assert m.version("torch").startswith("2.13.0"), "torch"
import onnx, onnxruntime, kaldi_native_fbank  # noqa: F401
EOF
then
  say "packages present: $("$VENV/bin/python" -c 'import importlib.metadata as m; print(", ".join(f"{k} {m.version(k)}" for k in ("funasr", "funasr-onnx", "onnxruntime", "onnx", "torch", "numpy")))')"
else
  say "installing torch 2.13.0 (CPU) first, then funasr 1.4.16, funasr-onnx 0.4.3, onnxruntime, onnx (constraints: $CONSTRAINTS)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" "torch==2.13.0"
  # kaldi-native-fbank: FunASR's fbank without torchaudio (how the goldens were made; torchaudio's wheel is a CUDA build)
  "$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" "funasr==1.4.16" "funasr-onnx==0.4.3" onnxruntime onnx \
    kaldi-native-fbank "numpy<=1.26.4" pyyaml soundfile
  "$VENV/bin/python" -c "import torch; assert torch.__version__.startswith('2.13.0') and not torch.version.cuda, torch.__version__" \
    || die "the anchors venv's torch is not 2.13.0 CPU"
  say "installed: $("$VENV/bin/python" -c 'import importlib.metadata as m; print(", ".join(f"{k} {m.version(k)}" for k in ("funasr", "funasr-onnx", "onnxruntime", "onnx", "torch", "numpy")))')"
fi

# --- 2. the checkpoint -----------------------------------------------------------------------------------------
if [ -f "$CKPT/model.pt" ] && [ -f "$CKPT/.verified" ]; then
  say "checkpoint $CKPT exists (verified)"
else
  say "building the large checkpoint in $CKPT (make_checkpoint.py --preset large --verify, ~10 s, 880 MB)"
  mkdir -p "$CKPT"
  "$VENV/bin/python" "$SHARED/golden/make_checkpoint.py" --preset large "$CKPT" --verify >/dev/null
  echo ok > "$CKPT/.verified"
fi

# --- 3. FunASR's ONNX export -----------------------------------------------------------------------------------
if [ -s "$CKPT/model.onnx" ] && [ -s "$CKPT/model_quant.onnx" ] && [ -f "$CKPT/.exported" ]; then
  say "ONNX export exists: $(du -h "$CKPT/model.onnx" | cut -f1) model.onnx, $(du -h "$CKPT/model_quant.onnx" | cut -f1) model_quant.onnx"
else
  say "exporting with FunASR's exporter (fp32 + quantized; about a minute and 6 GB)"
  rm -f "$CKPT/model.onnx" "$CKPT/model_quant.onnx" "$CKPT/.exported"
  "$VENV/bin/python" "$HERE/export_onnx.py" "$CKPT"
  [ -s "$CKPT/model.onnx" ] && [ -s "$CKPT/model_quant.onnx" ] || die "the export did not write model.onnx and model_quant.onnx in $CKPT"
  echo ok > "$CKPT/.exported"
  say "exported: $(du -h "$CKPT/model.onnx" | cut -f1) model.onnx, $(du -h "$CKPT/model_quant.onnx" | cut -f1) model_quant.onnx"
fi
say "done. Run (with the project's venv):"
say "  .venv/bin/python benchmarks/anchors/cpu_vs_onnx.py        # --quick for a smoke test"
say "  .venv/bin/python benchmarks/bench_train.py                # --quick for a smoke test"
