#!/usr/bin/env bash
# deploy/gpu-suite.sh picks its steps by GPU count and depth: checked in its dry run (no GPU
# needed): every GPU test binary always (the corrupted IPC handle test in a step of its own), the 2-GPU steps only with 2+ GPUs and in full or pair
# (pair: those first, no sanitizers, a skip on one GPU), the sanitizers only in full, and no
# GPU at all is a skip (77).
set -uo pipefail
suite=$1/deploy/gpu-suite.sh
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "gpu_suite_test: $*" >&2; exit 1; }

steps() {  # GPUS DEPTH -> step names, one per line
  EPD_GPU_SUITE_DRY_RUN=1 EPD_GPU_SUITE_GPUS=$1 bash "$suite" "$dir/$1-$2" "$2" 2>/dev/null |
    grep -v '^gpu-suite:' | cut -d: -f1
}

one_quick=$(steps 1 quick)
for name in common_cuda_test gpu_tests gpu_tests_corrupted_ipc gpu_frontend_tests gpu_daemon_tests \
  gpu_first_launch_tests gpu_spanning_tests request_fuzz_cuda python_gpu_tests bench_no_mps bench_mps; do
  grep -qx "$name" <<<"$one_quick" || fail "1 GPU, quick: no step $name in: $one_quick"
done
grep -qx memcheck <<<"$one_quick" && fail "1 GPU, quick: runs the sanitizers"
one_full=$(steps 1 full)
grep -qx memcheck <<<"$one_full" || fail "1 GPU, full: no memcheck"
grep -qx release_stall <<<"$one_full" || fail "1 GPU, full: no release_stall probe"
grep -qx bench_ht_ep2 <<<"$one_full" && fail "1 GPU, full: runs the 2-GPU steps"
two_full=$(steps 2 full)
for name in bench_ht_ep2 bench_two_daemons bench_two_daemons_network spanning_nccl_as_is \
  bench_two_daemons_ht; do
  grep -qx "$name" <<<"$two_full" || fail "2 GPUs, full: no step $name"
done
grep -q -- '--nodes 2' "$dir/2-full/summary.txt" || fail "2 GPUs: the daemons comparison lacks --nodes 2"

two_pair=$(steps 2 pair)
[[ $(head -n 1 <<<"$two_pair") == bench_ht_ep2 ]] || fail "2 GPUs, pair: the prefill target first"
for name in bench_two_daemons_network spanning_nccl_as_is gpu_spanning_tests gpu_tests \
  gpu_tests_corrupted_ipc; do
  grep -qx "$name" <<<"$two_pair" || fail "2 GPUs, pair: no step $name"
done
grep -qx memcheck <<<"$two_pair" && fail "2 GPUs, pair: runs the sanitizers"
EPD_GPU_SUITE_DRY_RUN=1 EPD_GPU_SUITE_GPUS=1 bash "$suite" "$dir/pair1" pair >/dev/null 2>&1
[[ $? == 77 ]] || fail "1 GPU, pair: expected exit 77 (skip)"

EPD_GPU_SUITE_DRY_RUN=1 EPD_GPU_SUITE_GPUS=0 bash "$suite" "$dir/none" >/dev/null 2>&1
[[ $? == 77 ]] || fail "no GPU: expected exit 77 (skip)"
bash "$suite" "$dir/bad" deep >/dev/null 2>&1
[[ $? == 2 ]] || fail "an unknown depth: expected exit 2"
echo "gpu_suite_test: OK"
