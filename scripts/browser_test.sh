#!/usr/bin/env bash
# The Dagster UI in headless Chromium, full form: the simulators + `dagster dev`, every asset's
# "Materialize all" clicked in the UI, the run waited for (a few minutes on 2 cores). The test suite
# (scripts/test.sh, CI) runs the smallest form of the same test: one source asset's "Materialize".
#   bash scripts/browser_test.sh            # full form
#   bash scripts/browser_test.sh --quick    # smallest form, as in CI
set -euo pipefail
cd "$(dirname "$0")/.."
full=1
if [ "${1:-}" = "--quick" ]; then
  full=0
  shift
fi
bash scripts/install_chromium.sh
bash scripts/setup.sh
CI=true INVOICE_PIPELINE_UI_FULL=$full exec .venv/bin/python -m pytest -q -p no:cacheprovider \
  invoice_pipeline_tests/test_ui_browser.py "$@"
