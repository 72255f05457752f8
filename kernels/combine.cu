#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>

#include "common/limits.h"
#include "kernels/combine.cuh"
#include "kernels/internal/device_sync.cuh"
#include "kernels/internal/overlapped_launch.cuh"
#include "kernels/internal/preload.cuh"
#include "kernels/internal/token_vector.cuh"

namespace epd::kernels {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
// Item geometry: kLaneVectors 16-byte vectors per lane per row, kRowsInFlight rows (k values)
// whose loads are issued before accumulating. Low-latency tokens have up to K rows (narrow
// items, many rows in flight); high-throughput tokens one row per destination rank, so their
// items are wide (4 KiB of a row per warp, the dispatch's part) to keep as many bytes in
// flight per warp on the few SMs they may use. Two rows of 4 KiB in flight would need more
// than the 128 registers a thread of a 512-thread block has; one row of 4 KiB beat two of
// 2 KiB on an H200 (tests/bench/results/ht-copies-1xH200-2026-12-03.md).
template <bool kWide>
struct ItemShape {
  static constexpr int kLaneVectors = kWide ? kCombineWideVectorsPerItem / 32
                                            : kCombineVectorsPerItem / 32;
  static constexpr int kRowsInFlight = kWide ? 1 : 4;
};
static_assert(kThreads == epd::kCollectiveThreads, "the backend sizes grids in these warps");
static_assert(sizeof(int4) == epd::kVectorBytes, "rows move in kVectorBytes vectors");

using detail::Vec;

// One warp reduces columns [chunk * 32 * kLaneVectors, +32 * kLaneVectors) vectors of token t
// over its K selections.
template <int kType, bool kWide>
__device__ void ReduceItem(const CombineParams& p, const char* const* bases, int t, int chunk,
                           int vectors) {
  using V = Vec<kType>;
  constexpr int kVectorsPerLane = ItemShape<kWide>::kLaneVectors;
  constexpr int kRowsInFlight = ItemShape<kWide>::kRowsInFlight;
  const int lane = threadIdx.x & 31, K = p.top_k;
  const int64_t row_bytes = static_cast<int64_t>(vectors) * 16;
  // Lane k holds selection k's source row (null when it contributes nothing) and weight.
  const char* my_row = nullptr;
  float my_weight = 0.0f;
  if (lane < K) {
    const int s = __ldg(p.slot + t * K + lane);
    if (s >= 0 && s < p.recv_rows) {
      const int e = __ldg(p.topk_idx + t * K + lane);
      my_row = bases[e / p.local_experts] + s * row_bytes;
      my_weight = p.rank_major ? 1.0f : __ldg(p.topk_weights + t * K + lane);
    }
  }
  float acc[kVectorsPerLane][V::kElems];
#pragma unroll
  for (int j = 0; j < kVectorsPerLane; ++j) {
#pragma unroll
    for (int i = 0; i < V::kElems; ++i) acc[j][i] = 0.0f;
  }
  const int first_vector = chunk * kVectorsPerLane * 32 + lane;
  // Only the selections that contribute, in ascending k (the sum's order): rank-major and
  // high-throughput rows are sparse (one per destination rank), and batching only those keeps
  // kRowsInFlight rows of loads in flight instead of spending batches on absent ones.
  unsigned remaining = __ballot_sync(0xffffffffu, my_row != nullptr);
  while (remaining != 0) {
    int4 z[kRowsInFlight][kVectorsPerLane];
    const char* rows[kRowsInFlight];
    int ks[kRowsInFlight];
#pragma unroll
    for (int r = 0; r < kRowsInFlight; ++r) {
      const int k = remaining != 0 ? __ffs(remaining) - 1 : -1;
      remaining &= remaining - 1;
      ks[r] = k;
      rows[r] = reinterpret_cast<const char*>(
          __shfl_sync(0xffffffffu, reinterpret_cast<uintptr_t>(my_row), k >= 0 ? k : 0));
      if (k < 0) rows[r] = nullptr;
#pragma unroll
      for (int j = 0; j < kVectorsPerLane; ++j) {
        const int v = first_vector + j * 32;
        if (rows[r] != nullptr && v < vectors) {
          z[r][j] = detail::LoadStreaming(reinterpret_cast<const int4*>(rows[r]) + v);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kRowsInFlight; ++r) {
      const int k = ks[r];
      const float w = __shfl_sync(0xffffffffu, my_weight, k >= 0 ? k : 0);
      if (rows[r] == nullptr) continue;
#pragma unroll
      for (int j = 0; j < kVectorsPerLane; ++j) {
        if (first_vector + j * 32 >= vectors) continue;
#pragma unroll
        for (int i = 0; i < V::kElems; ++i) {
          acc[j][i] = __fadd_rn(acc[j][i], __fmul_rn(w, V::Get(z[r][j], i)));
        }
      }
    }
  }
  int4* out_row = reinterpret_cast<int4*>(static_cast<char*>(p.out) + t * row_bytes);
#pragma unroll
  for (int j = 0; j < kVectorsPerLane; ++j) {
    const int v = first_vector + j * 32;
    if (v >= vectors) continue;
    int4 packed;
#pragma unroll
    for (int i = 0; i < V::kElems; ++i) V::Set(packed, i, acc[j][i]);
    out_row[v] = packed;
  }
}

__device__ __forceinline__ SyncArea* SyncOf(const CombineParams& p, int rank) {
  return detail::AsSync(p.sync.area[rank]);
}

// Leader: announce "my expert output is final, here is its address" and wait until every rank
// did, one thread per peer.
__device__ bool OpeningBarrier(const CombineParams& p, uint64_t seq) {
  __shared__ int failed_peer;
  if (threadIdx.x == 0) {
    failed_peer = INT_MAX;
    for (int d = 0; d < p.world_size; ++d) {
      detail::StoreRelaxedSys(&SyncOf(p, d)->expert_out[p.rank],
                              reinterpret_cast<uint64_t>(p.expert_out));
    }
    // One fence, then plain flag stores: our expert output (written by kernels that ended
    // before this one) and its address are visible to peers before they see the flag.
    detail::FenceForGroup(p.sync.spans_gpus);
    for (int d = 0; d < p.world_size; ++d) {
      detail::StoreRelaxedSys(&SyncOf(p, d)->start[p.rank], seq);
    }
  }
  __syncthreads();
  SyncArea* me = SyncOf(p, p.rank);
  const int s = threadIdx.x;
  int why = detail::kWaitOk;
  uint64_t seen = 0;
  if (s < p.world_size) {
    why = detail::WaitFlagAtLeast(&me->start[s], seq, p.timeout_ns, &seen, me, s, p.abort);
    // A peer that opened and then gave up (it timed out waiting for this rank) may already
    // reuse its expert output: read nothing of it.
    if (why == detail::kWaitOk && detail::LoadRelaxedSys(&me->abandoned[s]) >= seq) {
      why = detail::kWaitAbandoned;
      seen = seq;
    }
    if (why != detail::kWaitOk) atomicMin(&failed_peer, s);
  }
  __syncthreads();
  if (failed_peer == INT_MAX) return true;
  if (s == failed_peer) {  // the lowest failed peer's own thread reports it
    detail::ReportWaitFailure(p.error, why, kSyncPhaseStart, s, seq, seen, me);
    detail::PublishAbandoned(p.sync, p.world_size, p.rank, seq,
                             why == detail::kWaitTimeout ? s : -1);
  }
  return false;
}

// Last block's thread 0: "I read every peer's expert output", then wait until every rank did
// (a peer may reuse its expert output after that). Every block's peer loads completed (their
// values were reduced and stored) before FinishBlock counted it: plain flag stores suffice.
__device__ void ClosingBarrier(const CombineParams& p, SyncArea* me, uint64_t seq) {
  for (int d = 0; d < p.world_size; ++d) {
    detail::StoreRelaxedSys(&SyncOf(p, d)->end[p.rank], seq);
  }
  for (int s = 0; s < p.world_size; ++s) {
    uint64_t seen = 0;
    const int why = detail::WaitFlagAtLeast(&me->end[s], seq, p.timeout_ns, &seen, me, s, p.abort);
    if (why != detail::kWaitOk) {
      detail::ReportWaitFailure(p.error, why, kSyncPhaseEnd, s, seq, seen, me);
      detail::PublishAbandoned(p.sync, p.world_size, p.rank, seq,
                               why == detail::kWaitTimeout ? s : -1);
      return;
    }
  }
}

template <int kType, bool kWide>
__global__ void __launch_bounds__(kThreads) CombineKernel(const CombineParams p) {
  __shared__ const char* bases[kMaxRanks];
  detail::AwaitPriorKernel();
  SyncArea* me = SyncOf(p, p.rank);
  const auto [ticket, seq] = detail::StartOp(me, p.seq, p.seq_floor);
  uint64_t flags;
  if (ticket == 0) {
    flags = OpeningBarrier(p, seq) ? 0 : kGoAbort;
    detail::PublishGo(me, seq, flags);
  } else {
    flags = detail::AwaitGo(me, seq, p.timeout_ns);
  }
  if (!(flags & kGoAbort)) {
    // Peers' addresses, published before their start flags, which the leader saw before go.
    if (threadIdx.x < p.world_size) {
      if (p.expert_out_in_place) {
        // The slot destination s sent with its counts in the dispatch this combine follows.
        const uint64_t* inbox = detail::SyncInbox(me, p.experts);
        const int stride = SyncInboxStride(p.experts);
        const int slot = static_cast<int>(
            static_cast<uint32_t>(__ldcg(inbox + threadIdx.x * stride + p.experts + 1)));
        bases[threadIdx.x] = static_cast<const char*>(
            p.peers->handles[slot % kMaxHandleSlots][threadIdx.x].recv_x);
      } else {
        bases[threadIdx.x] =
            reinterpret_cast<const char*>(detail::LoadRelaxedSys(&me->expert_out[threadIdx.x]));
      }
    }
    __syncthreads();
    const int n = *p.bound_tokens;
    const int vectors = p.hidden * (kType == kTokenFp32 ? 4 : 2) / 16;
    constexpr int kItemVectors = ItemShape<kWide>::kLaneVectors * 32;
    const int chunks = (vectors + kItemVectors - 1) / kItemVectors;
    const int stride = gridDim.x * kWarps;
    for (int item = ticket * kWarps + (threadIdx.x >> 5); item < n * chunks; item += stride) {
      ReduceItem<kType, kWide>(p, bases, item / chunks, item % chunks, vectors);
    }
  }
  if (!detail::FinishBlock(me, /*remote_stores=*/false, seq)) return;
  if (threadIdx.x == 0) {
    if (!(flags & kGoAbort)) ClosingBarrier(p, me, seq);
    detail::SignalFenceFromDevice(p.signal);
  }
}

}  // namespace

namespace {

template <bool kWide>
cudaError_t LaunchCombineShape(const CombineParams& params, int blocks, cudaStream_t stream) {
  const bool overlap = params.seq != 0;  // host-numbered: the daemon's streams
  switch (params.token_type) {
    case kTokenBf16:
      return detail::LaunchOverlapped(overlap, &CombineKernel<kTokenBf16, kWide>, blocks, kThreads,
                                      0, stream, params);
    case kTokenFp16:
      return detail::LaunchOverlapped(overlap, &CombineKernel<kTokenFp16, kWide>, blocks, kThreads,
                                      0, stream, params);
    case kTokenFp32:
      return detail::LaunchOverlapped(overlap, &CombineKernel<kTokenFp32, kWide>, blocks, kThreads,
                                      0, stream, params);
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchCombine(const CombineParams& params, int blocks, cudaStream_t stream) {
  blocks = blocks < 1 ? 1 : blocks;
  return params.wide_items ? LaunchCombineShape<true>(params, blocks, stream)
                           : LaunchCombineShape<false>(params, blocks, stream);
}

namespace detail {

// Every token type and item shape LaunchCombine can pick.
cudaError_t PreloadCombineKernels() {
  for (const void* kernel : {reinterpret_cast<const void*>(&CombineKernel<kTokenBf16, false>),
                             reinterpret_cast<const void*>(&CombineKernel<kTokenFp16, false>),
                             reinterpret_cast<const void*>(&CombineKernel<kTokenFp32, false>),
                             reinterpret_cast<const void*>(&CombineKernel<kTokenBf16, true>),
                             reinterpret_cast<const void*>(&CombineKernel<kTokenFp16, true>),
                             reinterpret_cast<const void*>(&CombineKernel<kTokenFp32, true>)}) {
    if (const cudaError_t e = LoadKernel(kernel); e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

}  // namespace detail
}  // namespace epd::kernels
