#!/usr/bin/env bash
# Sets everything up and runs the whole test suite: unit, integration (real daemon + client
# processes on the cpu backend), reflection, bench smoke, and the GPU tests (which skip with a
# reason on a machine without a GPU).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/build.sh"
cd "$root/build"
ctest --output-on-failure -j "${EPD_TEST_JOBS:-2}" --timeout 300 "$@"
