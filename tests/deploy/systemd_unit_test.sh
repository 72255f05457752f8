#!/usr/bin/env bash
# The shipped systemd unit: `systemd-analyze verify` accepts it (with ExecStart pointed at
# the binary under test), its sandbox scores <= 4.0 by `systemd-analyze security`, it keeps
# the GPU, CUDA IPC and MPS access the daemon needs, and sysusers.d/epd.conf creates the
# `epd` user and group. Exit 77 (skipped) without systemd-analyze.
#   systemd_unit_test.sh SOURCE_DIR EPD_BINARY
set -euo pipefail
src=$1
epd=$2
max_score=4.0

if ! command -v systemd-analyze >/dev/null; then
  echo "SKIP: systemd-analyze is not installed (Debian package systemd)"
  exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

unit=$tmp/epd.service
sed "s|^ExecStart=/usr/bin/epd |ExecStart=$epd |" "$src/deploy/epd.service" >"$unit"
grep -q "^ExecStart=$epd " "$unit" || { echo "FAIL: ExecStart=/usr/bin/epd not found"; exit 1; }
systemd-analyze verify "$unit"
echo "verify: OK"

report=$(systemd-analyze security --offline=true "$unit" 2>&1)
score=$(sed -n 's/.*Overall exposure level for epd.service: \([0-9.]*\).*/\1/p' <<<"$report")
if [[ -z $score ]]; then
  echo "FAIL: no score in:"; echo "$report"; exit 1
fi
echo "security score: $score (limit $max_score)"
awk -v s="$score" -v m="$max_score" 'BEGIN { exit !(s <= m) }' || {
  echo "$report"; echo "FAIL: score $score > $max_score"; exit 1; }

# What the sandbox must not take away.
need() { grep -q "^$1" "$unit" || { echo "FAIL: the unit lacks $1"; exit 1; }; }
forbid() { if grep -q "^$1" "$unit"; then echo "FAIL: the unit sets $1"; exit 1; fi; }
need "DeviceAllow=char-nvidia-frontend rw"  # /dev/nvidia0.., /dev/nvidiactl
need "DeviceAllow=char-nvidia-uvm rw"       # unified memory, needed by every CUDA context
forbid "PrivateDevices=yes"                 # would hide /dev/nvidia*
forbid "PrivateTmp=yes"                     # would hide the MPS pipes in /tmp/nvidia-mps
forbid "PrivateIPC=yes"                     # CUDA IPC and /dev/shm are shared with frontends
forbid "ProcSubset=pid"                     # the driver reads /proc/driver/nvidia
forbid "PrivateUsers=yes"                   # peer uids must be the host's
forbid "MemoryDenyWriteExecute=yes"         # the CUDA driver maps JIT code
echo "GPU, IPC and MPS access: OK"

# sysusers.d: creates the epd user and group in an empty root.
if command -v systemd-sysusers >/dev/null; then
  mkdir -p "$tmp/root/etc"
  systemd-sysusers --root="$tmp/root" "$src/deploy/sysusers.d/epd.conf"
  grep -q '^epd:' "$tmp/root/etc/group" || { echo "FAIL: no group epd"; exit 1; }
  grep -q '^epd:' "$tmp/root/etc/passwd" || { echo "FAIL: no user epd"; exit 1; }
  echo "sysusers: OK"
else
  echo "sysusers: systemd-sysusers missing, not checked"
fi
echo "PASS"
