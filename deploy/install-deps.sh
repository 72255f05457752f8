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
  patchelf               # deploy/bundle.sh
  python3                # the bench smoke test's checker
  curl                   # the metrics test scrapes /metrics with it
)

missing=()
for package in "${packages[@]}"; do
  # "install ok installed" only when the package is fully installed (not just known).
  if [[ $(dpkg-query -W -f='${Status}' "$package" 2>/dev/null) != "install ok installed" ]]; then
    missing+=("$package")
  fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
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

echo "install-deps: installing ${missing[*]}"
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
