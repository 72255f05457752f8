#include <climits>
#include <cuda_pipeline.h>

#include "common/limits.h"
#include "kernels/dispatch.cuh"
#include "kernels/internal/count_exchange.cuh"
#include "kernels/internal/device_sync.cuh"
#include "kernels/internal/dispatch_payload.cuh"
#include "kernels/internal/expert_plan.cuh"
#include "kernels/internal/overlapped_launch.cuh"
#include "kernels/internal/preload.cuh"

namespace epd::kernels {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kExpertsPerThread = 8;  // kThreads * 8 = 4096 = GroupConfig's expert limit
static_assert(kThreads == epd::kCollectiveThreads, "the backend sizes grids in these warps");
static_assert(kThreads * kExpertsPerThread >= epd::kMaxExperts,
              "the one-block expert scan must cover GroupConfig's expert limit");
static_assert(sizeof(int4) == epd::kVectorBytes, "rows move in kVectorBytes vectors");

__device__ __forceinline__ SyncArea* SyncOf(const DispatchParams& p, int rank) {
  return detail::AsSync(p.sync.area[rank]);
}

// Leader part 1: counts (and the handle slot) out, counts in. Returns false (error written,
// peers told) when a wait failed; else *abandoned as ExchangeInbox's.
__device__ bool ExchangeCounts(const DispatchParams& p, int n, uint64_t seq, uint64_t* abandoned) {
  const int E = p.experts;
  return detail::ExchangeInbox<kThreads>(
      p.sync, p.world_size, p.rank, E, seq, p.abort, p.timeout_ns, p.error,
      // NOTE: by value: a reference to the kernel's parameters would copy them to local memory.
      [E, n, counts = p.expert_counts, slot = p.handle_slot](int e) {
        return e < E ? counts[e] : e == E ? n : slot;
      },
      abandoned);
}

// The handle slot destination d published with its counts (complete: the leader saw it).
__device__ __forceinline__ int DestinationSlot(const DispatchParams& p, int d) {
  const int E = p.experts;
  const uint64_t* inbox = detail::SyncInbox(SyncOf(p, p.rank), E);
  return static_cast<int>(static_cast<uint32_t>(__ldcg(inbox + d * SyncInboxStride(E) + E + 1)));
}

// Every block, before go: its guess of each destination's receive buffers, the ones in this
// rank's own handle slot (ranks usually create a layer's handles in the same order), copied
// into dest[] asynchronously (cp.async), so no thread stalls on it: the leader checks the
// guess against the published slots (kGoSlotsDiffer) and the common case loads nothing after
// go. The threads that started it finish it with FinishGuessingDestinations before a barrier.
static_assert(sizeof(PeerBuffers) % 8 == 0, "copied in 8-byte pieces");
__device__ __forceinline__ void StartGuessingDestinations(const DispatchParams& p,
                                                          PeerBuffers* dest) {
  const int d = threadIdx.x;
  if (d >= p.world_size) return;
  const auto* from = reinterpret_cast<const char*>(&p.peers->handles[p.handle_slot][d]);
  auto* to = reinterpret_cast<char*>(&dest[d]);
  for (int i = 0; i < static_cast<int>(sizeof(PeerBuffers)); i += 8) {
    __pipeline_memcpy_async(to + i, from + i, 8);
  }
  __pipeline_commit();
}
__device__ __forceinline__ void FinishGuessingDestinations() { __pipeline_wait_prior(0); }

// Every block, after a go with kGoSlotsDiffer: the receive buffers of each destination for
// this op, from the slot the destination published.
__device__ void LoadDestinations(const DispatchParams& p, PeerBuffers* dest) {
  for (int d = threadIdx.x; d < p.world_size; d += kThreads) {
    dest[d] = p.peers->handles[DestinationSlot(p, d) % kMaxHandleSlots][d];
  }
  __syncthreads();
}

// Leader part 2 (expert-major): base rows, own counts/offsets, capacity. Returns go flags.
// NOTE: the inbox is read with plain L2 loads (every entry was seen complete above, and peers
// write it only in the next dispatch); volatile loads would serialise the round trips.
__device__ uint64_t PlanExpertMajor(const DispatchParams& p) {
  __shared__ int first_overflow;
  const int R = p.world_size, E = p.experts, L = p.local_experts, stride = SyncInboxStride(E);
  const uint64_t* inbox = detail::SyncInbox(SyncOf(p, p.rank), E);
  int32_t* bases = detail::SyncBases(SyncOf(p, p.rank));
  if (threadIdx.x == 0) first_overflow = INT_MAX;  // ordered by PlanExperts' barriers
  const auto count = [inbox, stride](int s, int e) {
    return static_cast<int>(static_cast<uint32_t>(__ldcg(inbox + s * stride + e)));
  };
  detail::PlanExperts<kThreads, kExpertsPerThread>(
      R, p.rank, E, L, count,
      // NOTE: fields by value: a reference to the kernel's parameters would copy them to
      // local memory.
      [bases, L, rank = p.rank, capacity = p.capacity, counts = p.recv_counts,
       offsets = p.recv_offsets](int e, int offset_in_dest, int before, int total) {
        bases[e] = offset_in_dest + before;
        if (total > capacity) atomicMin(&first_overflow, e);
        if (e / L == rank) {
          counts[e - rank * L] = total;
          offsets[e - rank * L] = offset_in_dest;
        }
      });
  if (first_overflow == INT_MAX) return 0;
  if (threadIdx.x == 0) {
    const int e = first_overflow;
    int rows = 0;
    for (int s = 0; s < R; ++s) rows += count(s, e);
    p.error->a = e;
    p.error->b = rows;
    p.error->c = p.capacity;
    p.error->value = 0;
    p.error->value2 = 0;
    p.error->code = kDeviceErrorCapacity;
  }
  return kGoSkipData;
}

__device__ void PlanRankMajor(const DispatchParams& p) {
  const int E = p.experts, stride = SyncInboxStride(E);
  const uint64_t* inbox = detail::SyncInbox(SyncOf(p, p.rank), E);
  for (int s = threadIdx.x; s < p.world_size; s += kThreads) {
    p.recv_counts[s] = static_cast<int>(static_cast<uint32_t>(__ldcg(inbox + s * stride + E)));
  }
}

template <int kPayload>
__device__ void ExpertMajorRows(const DispatchParams& p, const PeerBuffers* dest, int n,
                                unsigned ticket, bool skip) {
  const int lane = threadIdx.x & 31;
  const int K = p.top_k, L = p.local_experts;
  const int parts = DispatchRowParts(p);
  const int32_t* bases = detail::SyncBases(SyncOf(p, p.rank));
  const int stride = gridDim.x * kWarps;
  for (int item = ticket * kWarps + (threadIdx.x >> 5); item < n * K * parts; item += stride) {
    const int i = item / parts, part = item % parts;
    const int e = __ldg(p.topk_idx + i);
    if (e < 0 || skip) {
      if (lane == 0 && part == 0) p.slot[i] = -1;
      continue;
    }
    const int d = e / L, t = i / K;
    // bases were written by the leader during this kernel: L2 load, never the nc path.
    const int64_t row = __ldcg(bases + e) + __ldg(p.local_rank + i);
    const PeerBuffers& peer = dest[d];
    if (lane == 0 && part == 0) {
      p.slot[i] = static_cast<int32_t>(row);
      peer.recv_src[row * 3 + 0] = p.rank;
      peer.recv_src[row * 3 + 1] = t;
      peer.recv_src[row * 3 + 2] = i - t * K;
      peer.recv_weights[row] = __ldg(p.topk_weights + i);
    }
    detail::WritePayloadPart<kPayload>(p, peer, row, t, part, lane);
  }
}

// kPayloadQuantize: a warp per (token, step) quantizes the step once and stores it to every
// row of the token, instead of quantizing each (token, k) row again. Everything but the stores
// needs only this rank's own inputs, so a warp prepares its first item while the leader still
// exchanges counts (QuantizedItem), and only the stores wait for the go word.
struct QuantizedItem {
  int item = -1;  // -1: nothing prepared
  detail::TokenStepPiece piece;
  int expert = -1;  // lane k < K: selection k's expert (-1: none)
  int local = 0;    // expert-major, lane k < K: the row's index among its expert's rows
};

__device__ QuantizedItem PrepareQuantizedItem(const DispatchParams& p, int item, int n, int lane) {
  QuantizedItem q;
  const int steps = DispatchQuantizeSteps(p);
  const int tokens = p.rank_major ? p.max_tokens : n;
  if (item >= tokens * steps) return q;  // warp-uniform
  q.item = item;
  const int t = item / steps, step = item % steps, K = p.top_k;
  const detail::TokenStepRaw raw =
      t < n ? detail::LoadTokenStep(p, t, step, lane) : detail::TokenStepRaw{};
  if (lane < K && t < n) {
    q.expert = __ldg(p.topk_idx + t * K + lane);
    if (q.expert >= 0 && !p.rank_major) q.local = __ldg(p.local_rank + t * K + lane);
  }
  if (__ballot_sync(0xffffffffu, q.expert >= 0) != 0) {  // t < n: x has the row
    q.piece = detail::QuantizeTokenStep(p, raw, step, lane);  // else zeros: an absent row
  }
  return q;
}

// Expert-major: the token's rows (base of its expert + its index), their metadata at step 0.
__device__ void StoreExpertMajorItem(const DispatchParams& p, const PeerBuffers* dest,
                                     const QuantizedItem& q, bool skip, int lane) {
  const int K = p.top_k, L = p.local_experts, steps = DispatchQuantizeSteps(p);
  const int t = q.item / steps, step = q.item % steps, i = t * K + lane;
  // bases were written by the leader during this kernel: L2 load, never the nc path.
  const int32_t* bases = detail::SyncBases(SyncOf(p, p.rank));
  int row = -1;  // rows of an expert are below its capacity: int32, as in slot
  if (lane < K) {
    if (q.expert >= 0 && !skip) row = __ldcg(bases + q.expert) + q.local;
    if (step == 0) {
      p.slot[i] = row;  // -1 without a row
      if (row >= 0) {
        const PeerBuffers& peer = dest[q.expert / L];
        peer.recv_src[int64_t{row} * 3 + 0] = p.rank;
        peer.recv_src[int64_t{row} * 3 + 1] = t;
        peer.recv_src[int64_t{row} * 3 + 2] = lane;
        peer.recv_weights[row] = __ldg(p.topk_weights + i);
      }
    }
  }
  for (unsigned left = __ballot_sync(0xffffffffu, row >= 0); left != 0; left &= left - 1) {
    const int k = __ffs(left) - 1;
    const int e_k = __shfl_sync(0xffffffffu, q.expert, k);
    const int row_k = __shfl_sync(0xffffffffu, row, k);
    detail::StoreTokenStep(p, dest[e_k / L], row_k, step, q.piece, lane);
  }
}

// Rank-major: row (this rank, t) of every destination, the piece where one of the token's
// experts lives there, zeros elsewhere (absent rows are rewritten every op).
__device__ void StoreRankMajorItem(const DispatchParams& p, const PeerBuffers* dest,
                                   const QuantizedItem& q, int lane) {
  const int K = p.top_k, L = p.local_experts, T = p.max_tokens, steps = DispatchQuantizeSteps(p);
  const int t = q.item / steps, step = q.item % steps;
  const int row = p.rank * T + t;  // < R * T, an int (kMaxRanks x kMaxTokensPerRank)
  for (int d = 0; d < p.world_size; ++d) {
    int e = -1;
    float w = 0.0f;
    if (q.expert >= 0 && q.expert / L == d) {
      e = q.expert;
      w = __ldg(p.topk_weights + t * K + lane);
    }
    const bool present = __ballot_sync(0xffffffffu, e >= 0) != 0;
    const PeerBuffers& peer = dest[d];
    if (lane < K && step == 0) {
      peer.recv_topk_idx[int64_t{row} * K + lane] = e;
      peer.recv_topk_weights[int64_t{row} * K + lane] = w;
    }
    detail::StoreTokenStep(p, peer, row, step, present ? q.piece : detail::TokenStepPiece{},
                           lane);
  }
}

// After go: the warp's items, the first one as prepared before go (if it was).
__device__ void QuantizedRows(const DispatchParams& p, const PeerBuffers* dest, int n,
                              unsigned ticket, bool skip, const QuantizedItem& first) {
  const int lane = threadIdx.x & 31;
  const int stride = gridDim.x * kWarps;
  for (int item = ticket * kWarps + (threadIdx.x >> 5);; item += stride) {
    const QuantizedItem q = item == first.item ? first : PrepareQuantizedItem(p, item, n, lane);
    if (q.item < 0) return;  // warp-uniform: past the last item
    if (p.rank_major) {
      StoreRankMajorItem(p, dest, q, lane);
    } else {
      StoreExpertMajorItem(p, dest, q, skip, lane);
    }
  }
}

// Row (this rank, t) on destination d: the token when one of its experts lives on d, else
// zero with ids -1 (absent rows are rewritten every op: the frontend may have used them).
template <int kPayload>
__device__ void RankMajorRows(const DispatchParams& p, const PeerBuffers* dest, int n,
                              unsigned ticket) {
  const int lane = threadIdx.x & 31;
  const int K = p.top_k, L = p.local_experts, T = p.max_tokens;
  const int parts = DispatchRowParts(p);
  const int stride = gridDim.x * kWarps;
  for (int item = ticket * kWarps + (threadIdx.x >> 5); item < p.world_size * T * parts;
       item += stride) {
    const int i = item / parts, part = item % parts;
    const int t = i / p.world_size, d = i % p.world_size;
    int e = -1;
    float w = 0.0f;
    if (lane < K && t < n) {
      e = __ldg(p.topk_idx + t * K + lane);
      if (e >= 0 && e / L == d) {
        w = __ldg(p.topk_weights + t * K + lane);
      } else {
        e = -1;
      }
    }
    const bool present = __ballot_sync(0xffffffffu, e >= 0) != 0;
    const PeerBuffers& peer = dest[d];
    const int64_t row = static_cast<int64_t>(p.rank) * T + t;
    if (lane < K && part == 0) {
      peer.recv_topk_idx[row * K + lane] = e;
      peer.recv_topk_weights[row * K + lane] = w;
    }
    if (present) {
      detail::WritePayloadPart<kPayload>(p, peer, row, t, part, lane);
    } else {
      detail::ZeroPayloadPart<kPayload>(p, peer, row, part, lane);
    }
  }
}

// kPayload: p.payload (LaunchDispatch's switch), so each payload's kernel gets its own
// registers and code.
template <int kPayload>
__global__ void __launch_bounds__(kThreads) DispatchKernel(const DispatchParams p) {
  __shared__ PeerBuffers dest[kMaxRanks];
  detail::AwaitPriorKernel();
  SyncArea* me = SyncOf(p, p.rank);
  const auto [ticket, seq] = detail::StartOp(me, p.seq, p.seq_floor);
  StartGuessingDestinations(p, dest);
  const int n = *p.bound_tokens;  // written by the routing kernel earlier on this stream
  uint64_t flags;
  QuantizedItem prepared;  // kPayloadQuantize: the warp's first item, prepared before go
  if (ticket == 0) {
    __shared__ bool slots_differ;
    if (threadIdx.x == 0) slots_differ = false;  // ordered by ExchangeInbox's first barrier
    flags = kGoAbort;
    uint64_t abandoned;
    if (ExchangeCounts(p, n, seq, &abandoned)) {
      // Loaded now, compared after planning: the plan hides the round trip.
      const int slot = threadIdx.x < p.world_size ? DestinationSlot(p, threadIdx.x) : 0;
      flags = 0;
      if (p.rank_major) {
        PlanRankMajor(p);
      } else {
        flags = PlanExpertMajor(p);
      }
      if (threadIdx.x < p.world_size && slot != p.handle_slot) slots_differ = true;
      // Its barrier also publishes slots_differ to the block.
      if (!detail::ConfirmNoneAbandoned(p.sync, p.world_size, p.rank, seq, abandoned, p.error)) {
        flags = kGoAbort;
      } else if (slots_differ) {
        flags |= kGoSlotsDiffer;
      }
    }
    FinishGuessingDestinations();  // long arrived; PublishGo's barrier publishes dest[]
    detail::PublishGo(me, seq, flags);
  } else {
    FinishGuessingDestinations();  // before AwaitGo's barrier, which publishes dest[]
    if constexpr (kPayload == kPayloadQuantize) {
      // Quantizing needs no peer: done while the leader exchanges counts.
      prepared = PrepareQuantizedItem(p, ticket * kWarps + (threadIdx.x >> 5), n, threadIdx.x & 31);
    }
    flags = detail::AwaitGo(me, seq, p.timeout_ns);
  }
  if (!(flags & kGoAbort)) {
    if (flags & kGoSlotsDiffer) LoadDestinations(p, dest);
    const bool skip = (flags & kGoSkipData) != 0;
    if constexpr (kPayload == kPayloadQuantize) {
      QuantizedRows(p, dest, n, ticket, skip, prepared);
    } else if (p.rank_major) {
      RankMajorRows<kPayload>(p, dest, n, ticket);
    } else {
      ExpertMajorRows<kPayload>(p, dest, n, ticket, skip);
    }
  }
  detail::FinishDispatch(p, me, seq, flags);
}

}  // namespace

cudaError_t LaunchDispatch(const DispatchParams& params, int blocks, cudaStream_t stream) {
  const int grid = blocks < 1 ? 1 : blocks;
  const bool overlap = params.seq != 0;  // host-numbered: the daemon's streams
  switch (params.payload) {
    case kPayloadCopy:
      return detail::LaunchOverlapped(overlap, &DispatchKernel<kPayloadCopy>, grid, kThreads, 0,
                                      stream, params);
    case kPayloadQuantize:
      return detail::LaunchOverlapped(overlap, &DispatchKernel<kPayloadQuantize>, grid, kThreads, 0,
                                      stream, params);
    case kPayloadPrequantized:
      return detail::LaunchOverlapped(overlap, &DispatchKernel<kPayloadPrequantized>, grid,
                                      kThreads, 0, stream, params);
    default:
      return cudaErrorInvalidValue;
  }
}

namespace detail {

cudaError_t PreloadDispatchKernels() {
  for (const void* kernel :
       {reinterpret_cast<const void*>(&DispatchKernel<kPayloadCopy>),
        reinterpret_cast<const void*>(&DispatchKernel<kPayloadQuantize>),
        reinterpret_cast<const void*>(&DispatchKernel<kPayloadPrequantized>)}) {
    if (cudaError_t e = LoadKernel(kernel); e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

}  // namespace detail
}  // namespace epd::kernels
