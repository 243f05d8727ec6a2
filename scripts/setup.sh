#!/usr/bin/env bash
# Creates .venv (once) and installs the project with its test, postgres, iceberg and scaleout extras. Needs only python3 >= 3.11.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[test,postgres,iceberg,scaleout]'
  touch .venv/.installed
fi
