#!/usr/bin/env bash
# The GPU measurements of the speed presets and of SD1.5's launch-bound cost, in one run
# (about 5 minutes on an H200, at most 7). Writes bench/results/*.md.
#   bash bench/gpu_speed.sh            # from the repository root, in an env with CUDA torch and ComfyUI
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${MAGICFACE_BENCH_OUT:-$repo/bench/results}
mkdir -p "$out"
python -P "$repo/bench/bench_pipeline.py" --device cuda --models sd15 --concepts 1,3 --gpu-busy \
    --no-breakdown --ops-by-function --out "$out/sd15_launches.md"
python -P "$repo/bench/bench_pipeline.py" --device cuda --models sdxl --concepts 2 --presets --gpu-busy \
    --no-breakdown --out "$out/sdxl_presets.md"
# Fusion by torch.compile, the candidate for fewer launches per step: SD1.5 R=1 with the per-step
# maths compiled (its first run compiles); cut at two minutes so the script stays under eight.
timeout 120 python -P "$repo/bench/bench_pipeline.py" --device cuda --models sd15 --concepts 1 --compile-maths \
    --no-breakdown --no-coupling --out "$out/sd15_compiled.md" || echo "compiled maths: did not finish (cut at 2 minutes, or an error above)"
cat "$out"/sd15_launches.md "$out"/sdxl_presets.md "$out"/sd15_compiled.md 2>/dev/null || true
