#!/usr/bin/env bash
# Install everything (venv, curvlab[dev], Debian's chromium for the browser tests) and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
# Each XLA CPU executable holds memory maps; one test worker compiles thousands of them and passes
# Linux's default limit of 65,530 maps (the compiler then crashes). Raise it where we may.
if [ "$(cat /proc/sys/vm/max_map_count 2>/dev/null || echo 262144)" -lt 262144 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo -n"; fi
  $SUDO sysctl -q -w vm.max_map_count=262144 2>/dev/null \
    || echo "note: could not raise vm.max_map_count; test modules will free compiled code between them" >&2
fi
export PYTHONUNBUFFERED=1
exec .venv/bin/python -m pytest -n 2 --dist loadfile --doctest-modules curvlab tests "$@"
