// The expert-major plan both dispatch kernels' leaders make once every peer's counts arrived:
// per expert, the rows it receives from all sources, the rows of sources ranked before this
// one, and where its rows start on its rank (experts of a rank packed in ascending order).
// Device-only; included by the kernels' .cu files.
#pragma once

#include <cub/block/block_scan.cuh>

namespace epd::kernels::detail {

// Whole block. count(s, e): rows source s sends expert e (an L2 load from the inbox). Calls
// emit(e, offset_in_dest, before, total) once per expert e < experts, from the thread that
// loaded e's counts, where offset_in_dest is the first row of e on its rank (e / local_experts)
// and before the rows of e from sources s < rank. Every thread returns after one last barrier.
// NOTE: experts are striped over threads (e = j * kThreads + threadIdx.x): a thread's loads
// are independent and issued together, and consecutive threads load consecutive entries. A
// blocked split (8 consecutive experts per thread) made the few threads that hold experts
// wait for one L2 round trip per expert, one after the other: ~3.8 us on an H200 at E 256.
// prefix [kThreads * kExpertsPerThread + 1] and before [kThreads * kExpertsPerThread]: the
// caller's shared memory, which it may use again once the plan is made.
// totals[e] in, then prefix[e] (exclusive) out, prefix[kSlots] = the grand total, so expert
// e's total is prefix[e + 1] - prefix[e]. In shared memory rather than registers: the kernels
// that plan also copy rows, and 16 registers held across the scan made them spill.
template <int kThreads, int kExpertsPerThread, typename Count, typename Emit>
__device__ __forceinline__ void PlanExperts(int world_size, int rank, int experts,
                                            int local_experts, Count count, Emit emit, int* prefix,
                                            int* before) {
  using Scan = cub::BlockScan<int, kThreads>;
  constexpr int kSlots = kThreads * kExpertsPerThread;
  __shared__ typename Scan::TempStorage scan_storage;
#pragma unroll
  for (int j = 0; j < kExpertsPerThread; ++j) {
    const int e = j * kThreads + threadIdx.x;
    int sum = 0, earlier = 0;
    if (j * kThreads < experts) {  // block-uniform
      // Loads without a branch around them, so that the unrolled sources' loads fly together.
      const int loaded = e < experts ? e : experts - 1;
#pragma unroll 4
      for (int s = 0; s < world_size; ++s) {
        const int c = count(s, loaded);
        sum += c;
        earlier += s < rank ? c : 0;
      }
      if (e >= experts) sum = earlier = 0;
    }
    prefix[e] = sum;
    before[e] = earlier;
  }
  __syncthreads();
  // The scan wants consecutive experts in a thread.
  int items[kExpertsPerThread];
#pragma unroll
  for (int j = 0; j < kExpertsPerThread; ++j) {
    items[j] = prefix[threadIdx.x * kExpertsPerThread + j];
  }
  int grand_total;
  Scan(scan_storage).ExclusiveSum(items, items, grand_total);
  __syncthreads();  // every thread read its totals before any prefix overwrites them
#pragma unroll
  for (int j = 0; j < kExpertsPerThread; ++j) {
    prefix[threadIdx.x * kExpertsPerThread + j] = items[j];
  }
  if (threadIdx.x == 0) prefix[kSlots] = grand_total;
  __syncthreads();
  for (int e = threadIdx.x; e < experts; e += kThreads) {
    const int d = e / local_experts;
    emit(e, prefix[e] - prefix[d * local_experts], before[e], prefix[e + 1] - prefix[e]);
  }
  __syncthreads();
}

// PlanExperts in shared memory of its own, two arrays as the low-latency dispatch has always
// had them: one array holding both cost that kernel ~0.7 us per op at 128 tokens on an H200
// (tests/bench/results/ht-copies-1xH200-2026-12-03.md).
template <int kThreads, int kExpertsPerThread, typename Count, typename Emit>
__device__ __forceinline__ void PlanExperts(int world_size, int rank, int experts,
                                            int local_experts, Count count, Emit emit) {
  __shared__ int prefix[kThreads * kExpertsPerThread + 1];
  __shared__ int before[kThreads * kExpertsPerThread];
  PlanExperts<kThreads, kExpertsPerThread>(world_size, rank, experts, local_experts, count, emit,
                                           prefix, before);
}

}  // namespace epd::kernels::detail
