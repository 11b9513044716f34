#!/usr/bin/env bash
# One-time set-up on a fresh machine: a virtual environment in .venv with torch 2.13.0 (CPU), the build
# tools, and paraformer_ext built from this checkout against that torch (editable, so edits to the Python
# code need no reinstall; C++/CUDA edits need `scripts/setup.sh` again). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# torch pinned: an unpinned torch would pull a multi-GB CUDA build. Override with TORCH_SPEC if you have a
# CUDA machine (e.g. TORCH_SPEC="torch==2.11.0").
.venv/bin/python -m pip install -q --upgrade pip
# pypinyin and jieba: the corpus tool's extra, which its tests use; ray[data]: the Ray Data extra and its test.
# torchaudio and kaldi-native-fbank are the test references (pyproject's [test] extra); installing them in the
# same command as the torch pin keeps pip from moving torch to suit torchaudio. websockets: the server
# (pyproject's [server] extra); cryptography and selenium: its TLS and web-page tests.
.venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}" numpy pyyaml soundfile tqdm \
  "scikit-build-core>=0.10" "pybind11>=2.12" ninja pytest pytest-benchmark torchaudio kaldi-native-fbank \
  pypinyin jieba "websockets>=13.1" cryptography selenium "ray[data]>=2.9"
.venv/bin/python -m pip install -q --no-build-isolation -e . 
.venv/bin/python -c "import paraformer_ext as p; print('paraformer_ext', p.__version__, p.build_info())"
