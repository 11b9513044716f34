#!/usr/bin/env bash
# Run HERE (not on the GPU machine) before calling the device: gathers what benchmarks/gpu_check.sh needs
# there into .gpu_carry/ (git-ignored via .git/info/exclude; pass it in the run's `carry`):
#   .gpu_carry/shared/   golden data + audio (../shared does not travel), without the large npz files it does not need
#   .gpu_carry/whl/      wheels the GPU image may lack (soundfile and its deps, pyyaml, tqdm, numpy), for Python 3.12;
#                        gpu_check.sh installs only those it does not find there
#   .gpu_carry/cache/    the FSMN-VAD weights, when they were fetched here (the GPU machine has no network)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${PARAFORMER_EXT_SHARED:-../shared}
rm -rf .gpu_carry && mkdir -p .gpu_carry/shared/golden .gpu_carry/whl .gpu_carry/cache
cp -r "$SHARED/audio" .gpu_carry/shared/
cp -r "$SHARED/golden/cif" "$SHARED/golden/vad" "$SHARED/golden/stream" .gpu_carry/shared/golden/
cp "$SHARED"/golden/*.json "$SHARED"/golden/*.npz "$SHARED"/golden/make_checkpoint.py "$SHARED"/golden/README.md .gpu_carry/shared/golden/
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .gpu_carry/whl soundfile cffi pycparser pyyaml tqdm numpy
if [ -d "${PARAFORMER_EXT_CACHE:-.cache}/fsmn-vad" ]; then cp -r "${PARAFORMER_EXT_CACHE:-.cache}/fsmn-vad" .gpu_carry/cache/; fi
du -sh .gpu_carry
