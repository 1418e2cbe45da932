#!/usr/bin/env bash
# Install everything into .venv and serve the curvlab dashboard (Voila) on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/curvlab dashboard "$@"
