#!/usr/bin/env bash
# Set up the host env (first run only) and run a workflow on the tiny random
# checkpoint; prints where the output images were written.
#   bash scripts/demo.sh                    # the three-concept MagicFace example
#   bash scripts/demo.sh --txt2img          # plain built-in txt2img graph
#   bash scripts/demo.sh workflows/api/x.json [--input-dir DIR] [--out DIR]
#   MAGICFACE_WORKFLOW=workflows/api/x.json bash scripts/demo.sh
#   COMFYUI_PATH=<ComfyUI tree> bash scripts/demo.sh   # on another host (its env is built once)
# (the tiny checkpoint is random: images are noise-like, the point is that
# the graph really runs.)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -n ${COMFYUI_PATH:-} && -z ${MAGICFACE_VENV:-} ]]; then
    venv=$(bash "$repo/scripts/setup_host.sh" "$COMFYUI_PATH")
    COMFYUI_PATH=$(cat "$venv/comfyui-root")  # the env's writable copy of the tree
    export COMFYUI_PATH
else
    venv=${MAGICFACE_VENV:-$(bash "$repo/scripts/setup_host.sh")}
fi
workflow=${MAGICFACE_WORKFLOW:-}
if [[ $# -gt 0 && $1 != --* ]]; then
    workflow=$1
    shift
fi
args=("$@")
[[ -n $workflow ]] && args=(--workflow "$(realpath "$workflow")" "${args[@]}")
cd "$repo"
exec "$venv/bin/python" -P scripts/run_workflow.py "${args[@]}"
