#!/usr/bin/env bash
# The cpu-backend test suite under AddressSanitizer + UndefinedBehaviorSanitizer (and
# LeakSanitizer at every process exit): a developer's check before a change to the daemon's
# core, the cpu backend, the client or the service lands. Not part of CI (it builds
# everything a second time; ~25 min on 2 cores). Builds in build-sanitize/ without CUDA.
# Reports of the daemon processes the tests start go to $EPD_SANITIZE_LOGS (default
# build-sanitize/sanitizer-logs/), one file per process; the script fails when any exists.
# Left out: the Python tests (the interpreter is not instrumented), c_api_test (its messages
# assume a client built with CUDA), the install test (its consumer is built without the
# sanitizers) and the RSS bound of the soak test (ASan's quarantine holds freed memory on
# purpose).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build-sanitize"
logs="${EPD_SANITIZE_LOGS:-$build/sanitizer-logs}"
flags="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DEPD_WITH_CUDA=OFF \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_C_FLAGS="$flags" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined"
cmake --build "$build" -j "${EPD_BUILD_JOBS:-$(nproc)}"
rm -rf "$logs" && mkdir -p "$logs"
export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:log_path=$logs/asan"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$logs/ubsan"
cd "$build"
status=0
ctest --output-on-failure -j "${EPD_TEST_JOBS:-2}" --timeout 600 \
  -E 'python|c_api_test|install_consumer_test|SoakHonestFrontendsBesideAnAbusiveClient' "$@" ||
  status=$?
if compgen -G "$logs/*" > /dev/null; then
  echo "sanitize: reports in $logs:" >&2
  grep -h -E 'runtime error|ERROR: (Address|Leak)Sanitizer|SUMMARY' "$logs"/* >&2 || true
  status=1
fi
exit $status
