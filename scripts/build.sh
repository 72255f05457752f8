#!/usr/bin/env bash
# Installs the dependencies (Debian packages) and builds epd into ./build.
# CUDA code is compiled whenever nvcc is found (/usr/local/cuda), even on machines without a GPU.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
"$root/deploy/install-deps.sh"
jobs="${EPD_BUILD_JOBS:-$(nproc)}"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo ${EPD_CMAKE_ARGS:-}
cmake --build build -j "$jobs"
