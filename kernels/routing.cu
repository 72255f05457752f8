#include <climits>

#include "kernels/internal/device_sync.cuh"
#include "kernels/internal/overlapped_launch.cuh"
#include "kernels/internal/preload.cuh"
#include "kernels/internal/routing_chunked.cuh"
#include "kernels/internal/routing_common.cuh"
#include "kernels/routing.cuh"
#include "kernels/routing_scratch.h"

namespace epd::kernels {
namespace {

using detail::DestinationMask;
using detail::FirstOfExpertInToken;
using detail::LoadId;
using detail::WriteRankMajorSlots;

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
// The default shared memory limit (48 KiB, dynamic + static) less the kernel's static
// shared memory (~1 KiB): at E = 4096 three warps' counts (48 KiB) would not launch.
constexpr size_t kCountBytesBudget = 46 * 1024;

// High-throughput packed rows: token t's index among this rank's tokens bound for rank d, in
// token order (warp w owns a contiguous token segment; ballots rank inside 32 tokens and a
// prefix over warps makes the indices global), and the row count per destination.
__device__ void PlanDestinationRows(const RoutingParams& p) {
  __shared__ int warp_rows[kWarps][kMaxRanks];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n = p.num_tokens, R = p.world_size;
  const int segment = (n + kWarps - 1) / kWarps;
  const int begin = min(n, warp * segment), end = min(n, begin + segment);
  int rows[kMaxRanks];
  for (int d = 0; d < kMaxRanks; ++d) rows[d] = 0;
  for (int base = begin; base < end; base += 32) {
    const int t = base + lane;
    const unsigned mask = t < end ? DestinationMask(p, t) : 0u;
    for (int d = 0; d < R; ++d) rows[d] += __popc(__ballot_sync(0xffffffffu, (mask >> d) & 1u));
  }
  if (lane == 0) {
    for (int d = 0; d < R; ++d) warp_rows[warp][d] = rows[d];
  }
  __syncthreads();
  if (threadIdx.x < R) {
    const int d = threadIdx.x;
    int running = 0;
    for (int w = 0; w < kWarps; ++w) {
      const int c = warp_rows[w][d];
      warp_rows[w][d] = running;
      running += c;
    }
    p.dest_counts[d] = running;
  }
  __syncthreads();
  for (int d = 0; d < R; ++d) rows[d] = warp_rows[warp][d];
  for (int base = begin; base < end; base += 32) {
    const int t = base + lane;
    const unsigned mask = t < end ? DestinationMask(p, t) : 0u;
    for (int d = 0; d < R; ++d) {
      const bool goes = (mask >> d) & 1u;
      const unsigned ballot = __ballot_sync(0xffffffffu, goes);
      if (t < end) {
        p.dest_row[t * R + d] = goes ? rows[d] + __popc(ballot & ((1u << lane) - 1u)) : -1;
      }
      rows[d] += __popc(ballot);
    }
  }
}

// NOTE: stable ranks without atomics on order: warp w owns a contiguous segment of the
// [n, K] selections; pass 1 ranks inside each 32-wide chunk with __match_any_sync and per-warp
// expert counters, a prefix over warps then makes the ranks global in (t, k) order.
__device__ void BindRouting(const RoutingParams& p, int warps) {
  extern __shared__ int counts[];  // [warps][E]
  __shared__ int first_bad, first_bad_weight;
  const int K = p.top_k, E = p.experts, n = p.num_tokens;
  const int total = n * K;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  if (threadIdx.x == 0) first_bad = first_bad_weight = INT_MAX;
  __syncthreads();
  for (int i = threadIdx.x; i < total; i += kThreads) {
    const int64_t e = LoadId(p, i);
    if (e < -1 || e >= E) atomicMin(&first_bad, i);
    detail::TakeSelection(p, i, e);  // every pass below reads this copy
    if (!isfinite(p.weights_out[i])) atomicMin(&first_bad_weight, i);
  }
  __syncthreads();
  if (first_bad != INT_MAX || first_bad_weight != INT_MAX) {
    detail::RejectRouting(p, first_bad, first_bad_weight);
    return;
  }

  for (int i = threadIdx.x; i < warps * E; i += kThreads) counts[i] = 0;
  __syncthreads();
  const int segment = (total + warps - 1) / warps;
  const int begin = min(total, warp * segment), end = min(total, begin + segment);
  if (warp < warps) {
    int* my_counts = counts + warp * E;
    for (int base = begin; base < end; base += 32) {
      const int i = base + lane;
      const int e = i < end ? p.topk_out[i] : -1;
      const bool valid =
          i < end && e >= 0 && (!p.high_throughput || FirstOfExpertInToken(p, i, e));
      if (i < end && !valid) p.local_rank[i] = -1;
      const int key = valid ? e : -1 - lane;  // unique keys for lanes that rank nothing
      const unsigned same = __match_any_sync(0xffffffffu, key);
      if (valid) {
        const unsigned lower = same & ((1u << lane) - 1u);
        p.local_rank[i] = my_counts[e] + __popc(lower);
      }
      __syncwarp();
      if (valid && lane == __ffs(same) - 1) my_counts[e] += __popc(same);
      __syncwarp();
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += kThreads) {
    int running = 0;
    for (int w = 0; w < warps; ++w) {
      const int c = counts[w * E + e];
      counts[w * E + e] = running;
      running += c;
    }
    p.expert_counts[e] = running;
  }
  __syncthreads();
  if (warp < warps) {
    for (int i = begin + lane; i < end; i += 32) {
      const int e = p.topk_out[i];
      if (e >= 0 && (!p.high_throughput || FirstOfExpertInToken(p, i, e))) {
        p.local_rank[i] += counts[warp * E + e];
      }
    }
  }
  if (p.rank_major) {
    __syncthreads();  // every topk_out of this kernel is written
    for (int t = threadIdx.x; t < n; t += kThreads) WriteRankMajorSlots(p, t);
  }
  if (p.high_throughput) {
    __syncthreads();  // every topk_out of this kernel is written
    PlanDestinationRows(p);
  }
  __syncthreads();
  if (threadIdx.x == 0) *p.bound_tokens = n;
}

__global__ void __launch_bounds__(kThreads) BindRoutingKernel(const RoutingParams p, int warps) {
  detail::AwaitPriorKernel();
  BindRouting(p, warps);  // every thread returns, on a rejected routing too
  __syncthreads();
  if (threadIdx.x == 0) detail::SignalFenceFromDevice(p.signal);
}

}  // namespace

cudaError_t LaunchBindRouting(const RoutingParams& params, cudaStream_t stream) {
  const size_t scratch_bytes = params.scratch != nullptr ? params.scratch_bytes : 0;
  if (UseChunkedRouting(params.num_tokens, params.experts, params.world_size,
                        params.high_throughput != 0, scratch_bytes, params.chunked_from)) {
    return detail::LaunchBindRoutingChunked(params, stream);
  }
  int warps = static_cast<int>(kCountBytesBudget / (sizeof(int) * params.experts));
  warps = warps < 1 ? 1 : (warps > kWarps ? kWarps : warps);
  const size_t shared_bytes = sizeof(int) * static_cast<size_t>(warps) * params.experts;
  return detail::LaunchOverlapped(params.overlap_launch != 0, &BindRoutingKernel, 1, kThreads,
                                  shared_bytes, stream, params, warps);
}

namespace detail {

cudaError_t PreloadRoutingKernels() {
  const cudaError_t e = LoadKernel(reinterpret_cast<const void*>(&BindRoutingKernel));
  return e != cudaSuccess ? e : PreloadRoutingChunkedKernels();
}

}  // namespace detail
}  // namespace epd::kernels
