// The chunked routing bind: the single-block bind's results (routing.cu) from a grid, for
// large n. Chunk c is tokens [32c, 32c + 32), owned by one warp in every pass:
//   1. count: per chunk, selections per expert (high-throughput: once per token and expert)
//      and tokens per destination rank, plus the chunk's first bad id and bad weight;
//   2. scan: the first error over all chunks (the error record, as the single block writes
//      it), else per column the exclusive prefix over chunks and the totals;
//   3. write: each chunk ranks its selections from its bases, in (t, k) order.
// Three launches on one stream order the passes, so no block waits for another.
#include <climits>

#include "kernels/internal/device_sync.cuh"
#include "kernels/internal/overlapped_launch.cuh"
#include "kernels/internal/preload.cuh"
#include "kernels/internal/routing_chunked.cuh"
#include "kernels/internal/routing_common.cuh"
#include "kernels/routing_scratch.h"

namespace epd::kernels::detail {
namespace {

constexpr int kChunkWarpsPerBlock = 4;  // small blocks: n = 4096 gives 32 of them
constexpr int kChunkThreads = kChunkWarpsPerBlock * 32;
constexpr size_t kCounterBytesBudget = 48 * 1024;  // default dynamic shared memory limit
constexpr int kScanWarps = 32;
constexpr int kScanThreads = kScanWarps * 32;
static_assert(kRoutingChunkTokens == 32, "a chunk's tokens are one warp's lanes");

struct ChunkScratch {
  int32_t* counts;      // [chunks][columns]
  int32_t* bad_id;      // [chunks]
  int32_t* bad_weight;  // [chunks]
  int32_t* rejected;    // [1]
  int chunks;
  int columns;
};

__device__ __forceinline__ unsigned LanesBelow(int lane) { return (1u << lane) - 1u; }

__global__ void __launch_bounds__(kChunkThreads)
    CountChunksKernel(const RoutingParams p, const ChunkScratch s) {
  extern __shared__ int counters[];  // [warps][E], one row per warp: no atomics
  detail::AwaitPriorKernel();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int chunk = blockIdx.x * (blockDim.x >> 5) + warp;
  if (chunk >= s.chunks) return;
  const int K = p.top_k, E = p.experts;
  int* mine = counters + warp * E;
  for (int e = lane; e < E; e += 32) mine[e] = 0;
  __syncwarp();
  const int t0 = chunk * kRoutingChunkTokens;
  const int t1 = min(p.num_tokens, t0 + kRoutingChunkTokens);
  const int end = t1 * K;
  int bad_id = INT_MAX, bad_weight = INT_MAX;
  for (int base = t0 * K; base < end; base += 32) {
    const int i = base + lane;
    if (i < end) {
      const int64_t id = LoadId(p, i);
      if (id < -1 || id >= E) bad_id = min(bad_id, i);
      TakeSelection(p, i, id);  // this kernel and the write pass read the copy from here on
      if (!isfinite(p.weights_out[i])) bad_weight = min(bad_weight, i);
    }
    __syncwarp();  // the token's earlier selections, taken by other lanes, are visible
    const int e = i < end ? p.topk_out[i] : -1;
    const bool valid = e >= 0 && (!p.high_throughput || FirstOfExpertInToken(p, i, e));
    const unsigned same = __match_any_sync(0xffffffffu, valid ? e : -1 - lane);
    if (valid && lane == __ffs(same) - 1) mine[e] += __popc(same);
    __syncwarp();  // the next round's leader of e may be another lane
  }
  int32_t* row = s.counts + static_cast<size_t>(chunk) * s.columns;
  for (int e = lane; e < E; e += 32) row[e] = mine[e];
  if (p.high_throughput) {
    const int t = t0 + lane;
    const unsigned mask = t < t1 ? DestinationMask(p, t) : 0u;
    for (int d = 0; d < p.world_size; ++d) {
      const int rows = __popc(__ballot_sync(0xffffffffu, (mask >> d) & 1u));
      if (lane == 0) row[E + d] = rows;
    }
  }
  bad_id = static_cast<int>(__reduce_min_sync(0xffffffffu, static_cast<unsigned>(bad_id)));
  bad_weight = static_cast<int>(__reduce_min_sync(0xffffffffu, static_cast<unsigned>(bad_weight)));
  if (lane == 0) {
    s.bad_id[chunk] = bad_id;
    s.bad_weight[chunk] = bad_weight;
  }
}

// Block b scans columns [32b, 32b + 32): lane = column, warp w a contiguous range of chunks.
// Every block finds the first error itself (chunks are few), block 0 alone reports it.
__global__ void __launch_bounds__(kScanThreads)
    ScanChunksKernel(const RoutingParams p, const ChunkScratch s) {
  __shared__ int first_bad, first_bad_weight;
  __shared__ int totals[kScanWarps][33];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (threadIdx.x == 0) first_bad = first_bad_weight = INT_MAX;
  __syncthreads();
  unsigned bad_id = INT_MAX, bad_weight = INT_MAX;
  for (int c = threadIdx.x; c < s.chunks; c += kScanThreads) {
    bad_id = min(bad_id, static_cast<unsigned>(s.bad_id[c]));
    bad_weight = min(bad_weight, static_cast<unsigned>(s.bad_weight[c]));
  }
  bad_id = __reduce_min_sync(0xffffffffu, bad_id);
  bad_weight = __reduce_min_sync(0xffffffffu, bad_weight);
  if (lane == 0) {
    atomicMin(&first_bad, static_cast<int>(bad_id));
    atomicMin(&first_bad_weight, static_cast<int>(bad_weight));
  }
  __syncthreads();
  if (first_bad != INT_MAX || first_bad_weight != INT_MAX) {
    if (blockIdx.x == 0) {
      RejectRouting(p, first_bad, first_bad_weight);
      if (threadIdx.x == 0) *s.rejected = 1;
    }
    return;
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    *s.rejected = 0;
    *p.bound_tokens = p.num_tokens;  // read only by later launches, after the write pass
  }
  const int column = blockIdx.x * 32 + lane;
  const bool mine = column < s.columns;
  const int per_warp = (s.chunks + kScanWarps - 1) / kScanWarps;
  const int c0 = min(s.chunks, warp * per_warp), c1 = min(s.chunks, c0 + per_warp);
  int sum = 0;
  if (mine) {
#pragma unroll 4
    for (int c = c0; c < c1; ++c) sum += s.counts[static_cast<size_t>(c) * s.columns + column];
  }
  totals[warp][lane] = sum;
  __syncthreads();
  if (warp == 0) {
    int running = 0;
    for (int w = 0; w < kScanWarps; ++w) {
      const int v = totals[w][lane];
      totals[w][lane] = running;
      running += v;
    }
    if (mine && column < p.experts) p.expert_counts[column] = running;
    if (mine && column >= p.experts) p.dest_counts[column - p.experts] = running;
  }
  __syncthreads();
  if (mine) {
    int running = totals[warp][lane];
    for (int c = c0; c < c1; ++c) {
      int32_t* at = s.counts + static_cast<size_t>(c) * s.columns + column;
      const int v = *at;
      *at = running;
      running += v;
    }
  }
}

__global__ void __launch_bounds__(kChunkThreads)
    WriteChunksKernel(const RoutingParams p, const ChunkScratch s) {
  extern __shared__ int counters[];  // [warps][E]: the chunk's next rank per expert
  if (*s.rejected) return;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int chunk = blockIdx.x * (blockDim.x >> 5) + warp;
  if (chunk >= s.chunks) return;
  const int K = p.top_k, E = p.experts;
  const int32_t* bases = s.counts + static_cast<size_t>(chunk) * s.columns;
  int* mine = counters + warp * E;
  for (int e = lane; e < E; e += 32) mine[e] = bases[e];
  __syncwarp();
  const int t0 = chunk * kRoutingChunkTokens;
  const int t1 = min(p.num_tokens, t0 + kRoutingChunkTokens);
  const int end = t1 * K;
  for (int base = t0 * K; base < end; base += 32) {
    const int i = base + lane;
    const int e = i < end ? p.topk_out[i] : -1;  // the count pass's copy
    const bool valid = e >= 0 && (!p.high_throughput || FirstOfExpertInToken(p, i, e));
    const unsigned same = __match_any_sync(0xffffffffu, valid ? e : -1 - lane);
    if (valid) {
      p.local_rank[i] = mine[e] + __popc(same & LanesBelow(lane));
    } else if (i < end) {
      p.local_rank[i] = -1;
    }
    __syncwarp();
    if (valid && lane == __ffs(same) - 1) mine[e] += __popc(same);
    __syncwarp();
  }
  const int t = t0 + lane;
  if (p.rank_major && t < t1) WriteRankMajorSlots(p, t);
  if (p.high_throughput) {
    const int R = p.world_size;
    const unsigned mask = t < t1 ? DestinationMask(p, t) : 0u;
    for (int d = 0; d < R; ++d) {
      const bool goes = (mask >> d) & 1u;
      const unsigned ballot = __ballot_sync(0xffffffffu, goes);
      if (t < t1)
        p.dest_row[t * R + d] = goes ? bases[E + d] + __popc(ballot & LanesBelow(lane)) : -1;
    }
  }
}

// The bind's fence signal, after its three kernels (the single-block bind writes it itself).
__global__ void SignalKernel(const DeviceFenceSignal signal) { SignalFenceFromDevice(signal); }

size_t CounterBytes(int warps, int experts) {
  return sizeof(int) * static_cast<size_t>(warps) * static_cast<size_t>(experts);
}

}  // namespace

cudaError_t LaunchBindRoutingChunked(const RoutingParams& params, cudaStream_t stream) {
  const RoutingScratchLayout layout = ComputeRoutingScratch(
      params.num_tokens, params.experts, params.world_size, params.high_throughput != 0);
  auto* base = static_cast<char*>(params.scratch);
  const ChunkScratch scratch{reinterpret_cast<int32_t*>(base + layout.counts),
                             reinterpret_cast<int32_t*>(base + layout.bad_id),
                             reinterpret_cast<int32_t*>(base + layout.bad_weight),
                             reinterpret_cast<int32_t*>(base + layout.rejected),
                             layout.chunks,
                             layout.columns};
  // Fewer warps per block when E is large, so their counter rows fit the default limit.
  int warps = static_cast<int>(kCounterBytesBudget / CounterBytes(1, params.experts));
  warps = warps < 1 ? 1 : (warps > kChunkWarpsPerBlock ? kChunkWarpsPerBlock : warps);
  const int chunk_blocks = (layout.chunks + warps - 1) / warps;
  const size_t shared_bytes = CounterBytes(warps, params.experts);
  cudaError_t e =
      detail::LaunchOverlapped(params.overlap_launch != 0, &CountChunksKernel, chunk_blocks,
                               warps * 32, shared_bytes, stream, params, scratch);
  if (e != cudaSuccess) return e;
  const int scan_blocks = (layout.columns + 31) / 32;
  ScanChunksKernel<<<scan_blocks, kScanThreads, 0, stream>>>(params, scratch);
  e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  WriteChunksKernel<<<chunk_blocks, warps * 32, shared_bytes, stream>>>(params, scratch);
  e = cudaGetLastError();
  if (e != cudaSuccess || params.signal.counter == nullptr) return e;
  SignalKernel<<<1, 1, 0, stream>>>(params.signal);
  return cudaGetLastError();
}

cudaError_t PreloadRoutingChunkedKernels() {
  for (const void* kernel : {reinterpret_cast<const void*>(&CountChunksKernel),
                             reinterpret_cast<const void*>(&ScanChunksKernel),
                             reinterpret_cast<const void*>(&WriteChunksKernel),
                             reinterpret_cast<const void*>(&SignalKernel)}) {
    const cudaError_t e = LoadKernel(kernel);
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

}  // namespace epd::kernels::detail
