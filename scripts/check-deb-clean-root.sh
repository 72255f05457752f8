#!/usr/bin/env bash
# Installs a built epd .deb into a fresh Debian 12 root (debootstrap, minbase) and checks
# that it runs there as the README says: apt pulls the dependencies, the postinst creates
# user/group epd and /etc/epd/epd.toml, `epd --version` and `--check-config` pass, and the
# daemon serves on /run/epd/epd.sock with the shipped config, then drains on SIGTERM.
# Needs root and the Debian mirror. A CUDA build links NCCL, which GPU nodes provide: pass
# its directory as NCCL_DIR (copied into the root's /usr/local/lib).
#   sudo scripts/check-deb-clean-root.sh build/epd_0.1.0_amd64.deb [ROOT_DIR]
set -euo pipefail
deb=$(realpath "$1")
root=${2:-/tmp/epd-cleanroot}
mirror=${EPD_DEBIAN_MIRROR:-http://deb.debian.org/debian}

if [[ ! -x $root/bin/bash ]]; then
  command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap
  debootstrap --variant=minbase bookworm "$root" "$mirror"
fi
cp "$deb" "$root/tmp/epd.deb"
if [[ -n ${NCCL_DIR:-} ]]; then
  mkdir -p "$root/usr/local/lib"
  cp -L "$NCCL_DIR"/libnccl.so.2 "$root/usr/local/lib/"
fi
# A private mount namespace: /proc for the root, nothing left mounted afterwards.
unshare -m chroot "$root" /bin/bash -euo pipefail -c '
  mount -t proc proc /proc
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends /tmp/epd.deb
  ldconfig
  epd --version
  epd --check-config /etc/epd/epd.toml
  getent group epd >/dev/null
  grep -q "^ExecStart=/usr/bin/epd " /usr/lib/systemd/system/epd.service
  epd --config /etc/epd/epd.toml --metrics-listen 127.0.0.1:0 &
  pid=$!
  for _ in $(seq 100); do [[ -S /run/epd/epd.sock ]] && break; sleep 0.1; done
  [[ -S /run/epd/epd.sock ]]
  kill -TERM $pid
  wait $pid
  echo "clean root: installed, checked, served and stopped"
'
