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
template <int kThreads, int kExpertsPerThread, typename Count, typename Emit>
__device__ __forceinline__ void PlanExperts(int world_size, int rank, int experts,
                                            int local_experts, Count count, Emit emit) {
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ int prefix[kThreads * kExpertsPerThread];
  int total[kExpertsPerThread], before[kExpertsPerThread];
#pragma unroll
  for (int j = 0; j < kExpertsPerThread; ++j) {
    total[j] = before[j] = 0;
    if (j * kThreads >= experts) continue;  // block-uniform
    const int e = j * kThreads + threadIdx.x;
    // Loads without a branch around them, so that the unrolled sources' loads fly together.
    const int loaded = e < experts ? e : experts - 1;
    int sum = 0, earlier = 0;
#pragma unroll 4
    for (int s = 0; s < world_size; ++s) {
      const int c = count(s, loaded);
      sum += c;
      earlier += s < rank ? c : 0;
    }
    if (e < experts) {
      total[j] = sum;
      before[j] = earlier;
    }
  }
  // The scan wants consecutive experts in a thread: through shared memory.
#pragma unroll
  for (int j = 0; j < kExpertsPerThread; ++j) prefix[j * kThreads + threadIdx.x] = total[j];
  __syncthreads();
  int items[kExpertsPerThread];
#pragma unroll
  for (int j = 0; j < kExpertsPerThread; ++j) {
    items[j] = prefix[threadIdx.x * kExpertsPerThread + j];
  }
  Scan(scan_storage).ExclusiveSum(items, items);
  __syncthreads();  // every thread read its totals before any prefix overwrites them
#pragma unroll
  for (int j = 0; j < kExpertsPerThread; ++j) {
    prefix[threadIdx.x * kExpertsPerThread + j] = items[j];
  }
  __syncthreads();
#pragma unroll
  for (int j = 0; j < kExpertsPerThread; ++j) {
    const int e = j * kThreads + threadIdx.x;
    if (e >= experts) continue;
    const int d = e / local_experts;
    emit(e, prefix[e] - prefix[d * local_experts], before[j], total[j]);
  }
  __syncthreads();
}

}  // namespace epd::kernels::detail
