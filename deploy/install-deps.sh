#!/usr/bin/env bash
# Installs every Debian package that building and testing epd needs (Debian 12 / bookworm).
# Idempotent: when everything is installed already it changes nothing and needs no network.
# Runs as root, or through sudo when available. CUDA and NCCL are not Debian packages here:
# install the CUDA toolkit under /usr/local/cuda for the cuda backend (optional).
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  grpc-proto             # health.proto and reflection.proto, compiled into the daemon
  libspdlog-dev libfmt-dev libsystemd-dev libtomlplusplus-dev libcli11-dev
  libgtest-dev libgmock-dev
  prometheus-cpp-dev     # /metrics
  libgloo-dev            # the cpu backend's transport between daemons (multi-node groups)
  patchelf               # deploy/bundle.sh
  python3                # the bench smoke test's checker, the Python package's tests
  python3-numpy          # the Python package's tests and cpu example
  curl                   # the metrics test scrapes /metrics with it
)

# Tools that only some tests use (they skip, with the reason, without them); installed when
# the command is missing, and a failure to install them is not fatal. COMMAND:PACKAGES.
optional=(
  "npm:nodejs npm"          # buf curl (npm package @bufbuild/buf) for the diagnostics test
  "promtool:prometheus"     # promtool check metrics, for the metrics test
)

missing=()
for package in "${packages[@]}"; do
  # "install ok installed" only when the package is fully installed (not just known).
  if [[ $(dpkg-query -W -f='${Status}' "$package" 2>/dev/null) != "install ok installed" ]]; then
    missing+=("$package")
  fi
done
missing_optional=()
for entry in "${optional[@]}"; do
  command -v "${entry%%:*}" >/dev/null || missing_optional+=("${entry#*:}")
done
if [[ ${#missing[@]} -eq 0 && ${#missing_optional[@]} -eq 0 ]]; then
  echo "install-deps: all ${#packages[@]} packages are installed"
  exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
  as_root=()
elif command -v sudo >/dev/null; then
  as_root=(sudo)
else
  echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2
  exit 1
fi

"${as_root[@]}" apt-get update -qq
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "install-deps: installing ${missing[*]}"
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
for packages_of_tool in "${missing_optional[@]}"; do
  # shellcheck disable=SC2086  # a list of package names
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends $packages_of_tool ||
    echo "install-deps: optional $packages_of_tool not installed; the tests that use it skip"
done
