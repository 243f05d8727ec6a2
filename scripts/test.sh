#!/usr/bin/env bash
# One command: set up, then run the test suite (both cores). pytest's exit 5 (no tests) is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
.venv/bin/python -m pytest -n 2 --dist loadfile -q "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "no tests were collected" >&2
  exit 1
fi
exit "$status"
