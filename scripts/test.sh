#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system_deps.sh
bash scripts/setup.sh
# setup.sh installed the test references: here a missing one fails instead of skipping
export PARAFORMER_EXT_REQUIRE_REFERENCES=1
exec .venv/bin/python -m pytest -q "$@"
