#!/usr/bin/env bash
# `cmake --install` of the client into a temporary prefix, then a tiny frontend configured
# with find_package(epd) against that prefix only, built and run.
#   install_consumer_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1
src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" --component client >/dev/null
test -f "$tmp/prefix/lib/cmake/epd/epdConfig.cmake" || test -n "$(find "$tmp/prefix" -name epdConfig.cmake)"
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S "$src/tests/install/consumer" -B "$tmp/build" "${generator[@]}" \
  -DCMAKE_PREFIX_PATH="$tmp/prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$tmp/build" >/dev/null
# Nothing may come from the source or build tree: the consumer sees only the prefix.
if grep -rq -e "$src/client" -e "$build/gen" "$tmp/prefix/lib"*/cmake "$tmp/build/build.ninja" 2>/dev/null; then
  echo "FAIL: the installed package points into the source or build tree"; exit 1
fi
"$tmp/build/epd_consumer" "unix://$tmp/no-daemon.sock"
echo PASS
