#!/usr/bin/env bash
# Sets everything up and runs the main job: the epd daemon plus an example frontend that
# spawns one process per rank and runs MoE dispatch -> expert -> combine through the daemon,
# checking every result. Uses the cuda backend on a GPU node, the cpu backend elsewhere.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/build.sh"

ranks="${EPD_DEMO_RANKS:-4}"
backend=cpu
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  backend=cuda
  ranks="$(nvidia-smi -L | wc -l)"
fi
rundir="$(mktemp -d /tmp/epd-demo.XXXXXX)"
socket="unix://$rundir/epd.sock"
"$root/build/bin/epd" --backend "$backend" --cpu-ranks "$ranks" --listen "$socket" \
  2>"$rundir/epd.log" &
daemon=$!
cleanup() {
  kill -TERM "$daemon" 2>/dev/null || true
  wait "$daemon" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 100); do
  [ -S "$rundir/epd.sock" ] && break
  sleep 0.1
done
echo "epd ($backend backend, $ranks ranks) is serving on $socket; log: $rundir/epd.log"
"$root/build/bin/epd_example_frontend" --address "$socket" --ranks "$ranks" "$@"
