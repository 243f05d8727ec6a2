#!/usr/bin/env bash
# Installs Debian's chromium and chromium-driver for the browser test of the Dagster UI
# (invoice_pipeline_tests/test_ui_browser.py), only if they are missing. Needs root or sudo.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
chromium --version
