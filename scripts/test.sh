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
export PYTHONUNBUFFERED=1
exec .venv/bin/python -m pytest -n 2 --dist loadfile --doctest-modules curvlab tests "$@"
