#!/usr/bin/env bash
# The Dagster UI in headless Chromium, in the README's order: `invoice-pipeline demo`, then `simulate` +
# `dagster dev` + "Materialize all" clicked in the UI, the run waited for. The test suite
# (scripts/test.sh, CI) runs the same test; --full also keeps the automation daemon on and uses more
# invoices.
#   bash scripts/browser_test.sh            # as in CI
#   bash scripts/browser_test.sh --full
set -euo pipefail
cd "$(dirname "$0")/.."
full=0
if [ "${1:-}" = "--full" ]; then
  full=1
  shift
fi
bash scripts/install_chromium.sh
bash scripts/setup.sh
CI=true INVOICE_PIPELINE_UI_FULL=$full exec .venv/bin/python -m pytest -q -p no:cacheprovider \
  invoice_pipeline_tests/test_ui_browser.py "$@"
