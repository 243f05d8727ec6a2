#!/usr/bin/env bash
# One command: set up, then run the whole pipeline on the built-in simulated sources.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/invoice-pipeline demo "$@"
