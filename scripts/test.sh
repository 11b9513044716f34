#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system_deps.sh
bash scripts/setup.sh
# the web page test (tests/test_server_page.py) drives a real headless browser: install Debian's chromium and
# its driver when they are missing and we may (CI runs as root with apt); elsewhere that test skips and says why
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
      || echo "could not install chromium/chromium-driver; the web page test will skip" >&2
  else
    echo "chromium/chromedriver missing and not root: the web page test will skip" >&2
  fi
fi
# setup.sh installed the test references: here a missing one fails instead of skipping
export PARAFORMER_EXT_REQUIRE_REFERENCES=1
exec .venv/bin/python -m pytest -q "$@"
