#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the self-contained demo: a random-weight Paraformer in FunASR's layout and
# synthetic speech are generated, then transcribed with the compiled kernels and with the plain PyTorch
# reference (same tokens, timings side by side). Extra arguments go to `paraformer-ext demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/paraformer-ext demo "$@"
