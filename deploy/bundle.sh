#!/usr/bin/env bash
# Relocatable bundle for GPU nodes that have only the driver, CUDA and NCCL:
#   deploy/bundle.sh OUTDIR [BUILD_DIR]      (BUILD_DIR defaults to $EPD_BUILD_DIR or build)
# Copies every executable of BUILD_DIR/bin into OUTDIR/bin with RPATH $ORIGIN/../lib and the
# non-system shared libraries they need (found with ldd) into OUTDIR/lib with RPATH $ORIGIN.
# The C API (libepd_c.so) goes to OUTDIR/lib too, and the Python package with its examples and
# tests to OUTDIR/python (the package finds ../lib/libepd_c.so by itself).
# Left out on purpose: glibc and the C++ runtime (the node's are newer), libcuda (belongs to
# the driver) and libnccl (the node provides the one matching its driver; put its folder
# first in LD_LIBRARY_PATH).
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: $0 OUTDIR [BUILD_DIR]" >&2
  exit 2
fi
out=$1
build=${2:-${EPD_BUILD_DIR:-build}}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
max_mb=${EPD_BUNDLE_MAX_MB:-62}  # the GPU hosts take 64 MiB with the working tree

if [[ ! -d $build/bin ]]; then
  echo "bundle: $build/bin does not exist; build first (or pass BUILD_DIR)" >&2
  exit 1
fi
if ! command -v patchelf >/dev/null; then
  echo "bundle: installing patchelf" >&2
  apt-get install -y -qq patchelf >/dev/null
fi

# Libraries the target node supplies itself.
is_system_lib() {
  case $(basename "$1") in
    linux-vdso.so* | ld-linux*.so* | libc.so* | libm.so* | libdl.so* | libpthread.so* | \
      librt.so* | libutil.so* | libresolv.so* | libstdc++.so* | libgcc_s.so* | \
      libcuda.so* | libnvidia-*.so* | libnccl.so*)
      return 0 ;;
  esac
  return 1
}

rm -rf "$out/bin" "$out/lib" "$out/python" "$out/gpu-suite.sh"
mkdir -p "$out/bin" "$out/lib"

# What a GPU node runs: the daemon, the example frontend, the GPU tests and the bench. The
# cpu-only unit and integration tests stay out (they run in CI); EPD_BUNDLE_ALL=1 adds them.
wanted=" epd epd_example_frontend epd-bench epd-bench-frontend"
wanted+=" epd_gpu_tests epd_gpu_daemon_tests epd_gpu_first_launch_tests epd_gpu_frontend_tests"
wanted+=" epd_gpu_spanning_tests request_fuzz_test"
wanted+=" epd-post-bench epd-handoff-bench epd-release-stall-bench epd-restart-bench common_cuda_test "
binaries=()
for f in "$build"/bin/*; do
  [[ -f $f && -x $f ]] || continue
  [[ ${EPD_BUNDLE_ALL:-0} == 1 || $wanted == *" $(basename "$f") "* ]] || continue
  head -c 4 "$f" | grep -q $'\x7fELF' || continue
  binaries+=("$f")
done
if [[ ${#binaries[@]} -eq 0 ]]; then
  echo "bundle: no executables in $build/bin" >&2
  exit 1
fi

declare -A libs=()
for f in "${binaries[@]}"; do
  while read -r name arrow path _; do
    [[ $arrow == "=>" ]] || continue
    if [[ $path == "not" ]]; then
      is_system_lib "$name" || echo "bundle: warning: $(basename "$f") needs $name, not found here" >&2
      continue
    fi
    is_system_lib "$path" || libs[$path]=1
  done < <(ldd "$f")
  install -m 0755 "$f" "$out/bin/"
done

# The C API library and what it needs (it links the client statically).
c_api=$(readlink -f "$build/lib/libepd_c.so" 2>/dev/null || true)
if [[ ! -f $c_api ]]; then
  echo "bundle: $build/lib/libepd_c.so does not exist; build the epd_c target first" >&2
  exit 1
fi
while read -r name arrow path _; do
  [[ $arrow == "=>" && $path != "not" ]] || continue
  is_system_lib "$path" || libs[$path]=1
done < <(ldd "$c_api")
install -m 0755 "$c_api" "$out/lib/$(basename "$c_api")"

for lib in "${!libs[@]}"; do
  # Keep the soname the binaries ask for (ldd shows the link name, which may be a symlink).
  cp -L "$lib" "$out/lib/$(basename "$lib")"
done

# Debug info stays in the build tree. Executables keep only their dynamic symbols (their local
# symbols alone are ~7 MB, and a bundle has to travel under 64 MiB with the gloo transport's
# libraries); libraries keep their symbols.
strip --strip-unneeded "$out"/bin/* 2>/dev/null || true
strip --strip-debug "$out"/lib/* 2>/dev/null || true
for f in "$out"/bin/*; do patchelf --set-rpath '$ORIGIN/../lib' "$f"; done
for f in "$out"/lib/*; do patchelf --set-rpath '$ORIGIN' "$f"; done
# After strip (which would replace a link by a copy): the name the Python package loads.
ln -sf "$(basename "$c_api")" "$out/lib/libepd_c.so"

# The Python package (pure Python), its examples, tests and the post-latency bench.
mkdir -p "$out/python/tests"
cp -r "$repo/python/epd" "$repo/python/examples" "$out/python/"
cp "$repo"/tests/python/*.py "$repo"/tests/gpu/python/*.py \
  "$repo/tests/bench/python_post_latency.py" "$repo/tests/bench/python_fenced_gpu.py" \
  "$out/python/tests/"
find "$out/python" -name __pycache__ -prune -exec rm -rf {} +
# The runner of every GPU test and benchmark on a GPU host (gpu-suite.sh OUTDIR [quick|full]).
cp "$repo/deploy/gpu-suite.sh" "$out/"

size_mb=$(du -sm "$out" | cut -f1)
echo "bundle: ${#binaries[@]} binaries, ${#libs[@]} libraries + libepd_c, python/, ${size_mb} MB in $out"
ls "$out/bin"
if ((size_mb > max_mb)); then
  echo "bundle: $size_mb MB exceeds the ${max_mb} MB budget" >&2
  exit 1
fi
