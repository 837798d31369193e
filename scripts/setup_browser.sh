#!/usr/bin/env bash
# Install what tests/ui/test_browser.py needs: Debian's Chromium (apt) and the Playwright
# Python package in the given virtual environment. Playwright drives the system Chromium
# (executable_path=/usr/bin/chromium): no browser is downloaded.
# Usage: scripts/setup_browser.sh /path/to/venv
set -euo pipefail
venv="${1:?usage: $0 /path/to/venv}"
if [ ! -x /usr/bin/chromium ]; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium fonts-dejavu-core
fi
"$venv/bin/python" -m pip install --quiet playwright
"$venv/bin/python" -c "import playwright.sync_api" && /usr/bin/chromium --version
