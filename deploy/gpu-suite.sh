#!/usr/bin/env bash
# Every GPU test and benchmark of epd, from a relocatable bundle (deploy/bundle.sh), on a GPU
# host: the steps adapt to the GPUs it has. Logs, JSON results and a summary go to OUTDIR.
#
#   bundle/gpu-suite.sh OUTDIR [quick|full|pair]   (run from anywhere; finds its bundle itself)
#
# quick (default): the GPU test binaries, the Python GPU tests, the standard benchmark with and
# without MPS, the restart benchmark. full: also compute-sanitizer on the small cases, repeated
# spanning and graph tests, the hand-off floor, and with 2+ GPUs the high-throughput prefill targets and the
# daemons-per-GPU comparison. pair (2+ GPUs, else exit 77): what only two GPUs show, first —
# the prefill targets, the daemons-per-GPU comparison and the spanning tests with one GPU per
# daemon — then the GPU test binaries; sized for one 10-minute call. EPD_GPU_SUITE_GPUS=N overrides the GPU count (nvidia-smi -L);
# EPD_GPU_SUITE_DRY_RUN=1 prints the steps instead of running them.
# NCCL: put the folder of the NCCL the driver matches first in LD_LIBRARY_PATH beforehand.
set -uo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: $0 OUTDIR [quick|full]" >&2
  exit 2
fi
out=$1
depth=${2:-quick}
if [[ $depth != quick && $depth != full && $depth != pair ]]; then
  echo "gpu-suite: depth '$depth' must be quick, full or pair" >&2
  exit 2
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=$here/bin
python=${EPD_PYTHON:-python3}
dry=${EPD_GPU_SUITE_DRY_RUN:-0}
gpus=${EPD_GPU_SUITE_GPUS:-$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')}
mkdir -p "$out"
summary=$out/summary.txt
: > "$summary"

# step NAME LIMIT_S CMD...: runs CMD with its output in OUTDIR/NAME.log, bounded by LIMIT_S,
# and appends one line (exit code, seconds, gtest/unittest tallies) to the summary.
step() {
  local name=$1 limit=$2
  shift 2
  if [[ $dry == 1 ]]; then
    echo "$name: $*" | tee -a "$summary"
    return 0
  fi
  local start=$SECONDS
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  local tally
  tally=$(grep -E '^\[  (PASSED|FAILED)  \] [0-9]|^Ran |^OK|^FAILED \(|ERROR SUMMARY|RACECHECK SUMMARY' \
    "$out/$name.log" | tr '\n' ' ')
  echo "$name rc=$rc $((SECONDS - start))s $tally" | tee -a "$summary"
}

mps_on() { [[ $dry == 1 ]] || { nvidia-cuda-mps-control -d && sleep 1; }; }
mps_off() { [[ $dry == 1 ]] || echo quit | nvidia-cuda-mps-control; }

# What only two GPUs show (the prefill target, the daemons comparison, one GPU per daemon).
pair_steps() {
  # The prefill target (EP2, T 4096, at most 24 SMs) and the decode numbers beside it.
  step bench_ht_ep2 600 "$bin/epd-bench" --ranks 2 --tokens 4096 --algorithm ht \
    --routings random --modes inproc,fenced,nccl --json "$out/ht-t4096-ep2.json"
  step bench_ll_ep2 600 "$bin/epd-bench" --ranks 2 --tokens 128 --algorithm ll \
    --routings random --modes inproc,fenced,frontend,nccl --json "$out/ll-t128-ep2.json"
  # One daemon with two GPUs against two daemons with one each (NCCL as it finds them, then
  # on its network path) and the spanning tests with one GPU per daemon, both ways.
  step bench_one_daemon 600 "$bin/epd-bench" --ranks 2 --routings random \
    --modes fenced,blocking --json "$out/one-daemon-2gpu.json"
  step bench_two_daemons 600 "$bin/epd-bench" --ranks 2 --nodes 2 --routings random \
    --modes fenced,blocking --json "$out/two-daemons-2gpu.json"
  step bench_two_daemons_network 600 "$bin/epd-bench" --ranks 2 --nodes 2 --network-path \
    --routings random --modes fenced,blocking --json "$out/two-daemons-network-2gpu.json"
  step spanning_nccl_as_is 600 env EPD_SPANNING_TEST_NCCL_AS_IS=1 \
    "$bin/epd_gpu_spanning_tests"
  # The prefill shape across two daemons (high-throughput's packed layout through NCCL).
  step bench_two_daemons_ht 600 "$bin/epd-bench" --ranks 2 --nodes 2 --tokens 4096 \
    --algorithm ht --routings random --modes fenced,blocking --json "$out/two-daemons-ht-2gpu.json"
}

if [[ $gpus -lt 1 ]]; then
  echo "gpu-suite: no GPU here; the cpu backend is covered by the tests of the README" >&2
  exit 77
fi
echo "gpu-suite: $gpus GPU(s), $depth" | tee -a "$summary"

# epd_gpu_tests, with the corrupted IPC handle test in a step of its own: libcuda has crashed
# the process in it about one run in five (README, Security: a known limit), which would
# otherwise lose every later test's result.
gpu_tests_steps() {
  local corrupted='CudaImport.CorruptedHandlesLeaveTheContextWorking'
  step gpu_tests 900 "$bin/epd_gpu_tests" --gtest_filter="-$corrupted"
  step gpu_tests_corrupted_ipc 120 "$bin/epd_gpu_tests" --gtest_filter="$corrupted"
}

if [[ $depth == pair ]]; then
  if [[ $gpus -lt 2 ]]; then
    echo "gpu-suite: pair needs 2+ GPUs; this host has $gpus" >&2
    exit 77
  fi
  pair_steps
  step gpu_spanning_tests 300 "$bin/epd_gpu_spanning_tests"  # one GPU per daemon, network path
  gpu_tests_steps
  step gpu_frontend_tests 600 "$bin/epd_gpu_frontend_tests"
  step gpu_daemon_tests 300 "$bin/epd_gpu_daemon_tests"
  echo "gpu-suite: done; summary in $summary" >&2
  exit 0
fi

step common_cuda_test 120 "$bin/common_cuda_test"
gpu_tests_steps
step gpu_frontend_tests 600 "$bin/epd_gpu_frontend_tests"
step gpu_daemon_tests 300 "$bin/epd_gpu_daemon_tests"
step gpu_first_launch_tests 120 "$bin/epd_gpu_first_launch_tests"
step gpu_spanning_tests 300 "$bin/epd_gpu_spanning_tests"
# Randomised bad input against the cuda backend (mangled CUDA IPC handles included).
step request_fuzz_cuda 300 env EPD_FUZZ_BACKEND=cuda "$bin/request_fuzz_test" \
  --gtest_filter='RequestFuzzTest.*:StreamFuzzTest.*'
step python_gpu_tests 300 env EPD_DAEMON="$bin/epd" "$python" "$here/python/tests/run_tests.py" \
  test_gpu_layer
step bench_no_mps 600 "$bin/epd-bench" --routings random --modes inproc,fenced,frontend,nccl \
  --json "$out/standard-no-mps.json"
# What a frontend restart costs: its handle kept in epd, created again, epd's backend made anew.
step bench_restart 300 "$bin/epd-restart-bench" --json "$out/restart.json"
mps_on
step bench_mps 600 "$bin/epd-bench" --routings random --modes inproc,fenced \
  --json "$out/standard-mps.json"
mps_off

if [[ $depth == full ]]; then
  small='Table/HighThroughputGpuTest.MatchesReferenceBitForBit/Small_R1:'
  small+='Table/HighThroughputSharedGpuTest.MatchesReferenceBitForBit/R2_Sparse:'
  small+='Table/DispatchCombineTest.MatchesReferenceBitForBit/Small_R1*'
  step memcheck 900 compute-sanitizer --tool memcheck "$bin/epd_gpu_tests" --gtest_filter="$small"
  step racecheck 900 compute-sanitizer --tool racecheck "$bin/epd_gpu_tests" \
    --gtest_filter="$small"
  step spanning_repeated 900 "$bin/epd_gpu_spanning_tests" --gtest_repeat=10
  step graphs_repeated 900 "$bin/epd_gpu_frontend_tests" --gtest_filter='*Captured*' \
    --gtest_repeat=5
  step handoff_no_mps 300 "$bin/epd-handoff-bench" --json "$out/handoff-no-mps.json"
  # Which release calls wait for running kernels (why the backend reclaims memory as it does).
  step release_stall 120 "$bin/epd-release-stall-bench"
  mps_on
  step handoff_mps 300 "$bin/epd-handoff-bench" --json "$out/handoff-mps.json"
  mps_off
  if [[ $gpus -ge 2 ]]; then
    pair_steps
  fi
fi
echo "gpu-suite: done; summary in $summary" >&2
