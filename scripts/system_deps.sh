#!/usr/bin/env bash
# Debian packages some features and their tests need: espeak-ng and sox (`paraformer-ext make-corpus`).
# Installs what is missing when run as root with apt-get (CI); elsewhere prints the command and continues, and
# the tests that need a missing program skip with a message naming it.
set -uo pipefail
missing=()
command -v espeak-ng >/dev/null || missing+=(espeak-ng)
command -v sox >/dev/null || missing+=(sox)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing ${missing[*]} (apt-get)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; } ||
    echo "warning: could not install ${missing[*]}; their tests will skip" >&2
else
  echo "note: ${missing[*]} missing; install with: sudo apt-get install -y ${missing[*]}" >&2
fi
exit 0
