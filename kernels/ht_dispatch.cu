#include <climits>

#include "common/limits.h"
#include "kernels/ht_dispatch.cuh"
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
constexpr int kExpertsPerThread = 8;
static_assert(kThreads == epd::kCollectiveThreads, "the backend sizes grids in these warps");
static_assert(kThreads * kExpertsPerThread >= epd::kMaxExperts,
              "the one-block expert scan must cover GroupConfig's expert limit");
static_assert(sizeof(int4) == epd::kVectorBytes, "rows move in kVectorBytes vectors");
static_assert(kMaxRanks <= kThreads, "one leader thread per destination rank");
constexpr int kPlanSlots = kThreads * kExpertsPerThread;
constexpr int kPlanInts = 2 * kPlanSlots + 1;  // PlanExperts' prefix and before
constexpr int kSharedInts =
    kPlanInts > kMaxExperts + kMaxRanks ? kPlanInts : kMaxExperts + kMaxRanks;

__device__ __forceinline__ SyncArea* SyncOf(const HtDispatchParams& p, int rank) {
  return detail::AsSync(p.sync.area[rank]);
}
__device__ __forceinline__ int InboxExperts(const HtDispatchParams& p) {
  return HtInboxExperts(p.experts, p.world_size);
}
// Inbox entry e of source s, once the leader saw it complete (plain L2 load: peers write it
// again only in the next dispatch).
__device__ __forceinline__ int InboxCount(const HtDispatchParams& p, int s, int e) {
  const uint64_t* inbox = detail::SyncInbox(SyncOf(p, p.rank), InboxExperts(p));
  return static_cast<int>(
      static_cast<uint32_t>(__ldcg(inbox + s * SyncInboxStride(InboxExperts(p)) + e)));
}

// Leader part 1: this rank's counts out to every peer, every peer's counts in. Returns false
// (error written, peers told) when a wait failed; else *abandoned as ExchangeInbox's.
__device__ bool ExchangeCounts(const HtDispatchParams& p, int n, uint64_t seq,
                               uint64_t* abandoned) {
  const int E = p.experts, X = InboxExperts(p);
  return detail::ExchangeInbox<kThreads>(
      p.sync, p.world_size, p.rank, X, seq, p.abort, p.timeout_ns, p.error,
      // NOTE: by value: a reference to the kernel's parameters would copy them to local memory.
      [E, X, n, experts = p.expert_counts, dests = p.dest_counts, slot = p.handle_slot](int e) {
        return e < E ? experts[e] : e < X ? dests[e - E] : e == X ? n : slot;
      },
      abandoned);
}

// Leader part 2: base rows (bases[E + d]) and gather-list bases (bases[e]) of this source on
// every destination, this rank's own receive metadata, the row capacity. Returns go flags.
__device__ uint64_t Plan(const HtDispatchParams& p, int* scratch) {
  __shared__ int first_overflow;
  const int R = p.world_size, E = p.experts, L = p.local_experts;
  int32_t* bases = detail::SyncBases(SyncOf(p, p.rank));
  if (threadIdx.x == 0) first_overflow = INT_MAX;
  __syncthreads();

  // Rows: source-rank-major packing, so this rank's rows on d follow those of ranks < rank.
  if (threadIdx.x < R) {
    const int d = threadIdx.x;
    int before = 0, total = 0;
    for (int s = 0; s < R; ++s) {
      const int c = InboxCount(p, s, E + d);
      total += c;
      if (s < p.rank) before += c;
    }
    bases[E + d] = before;
    if (total > p.recv_capacity) atomicMin(&first_overflow, d);
  }
  if (threadIdx.x == 0) {
    int row = 0;
    for (int s = 0; s < R; ++s) {
      const int c = InboxCount(p, s, E + p.rank);
      p.recv_rank_offsets[s] = row;
      p.recv_rank_counts[s] = c;
      row += c;
    }
  }

  // Gather lists: expert e's entries on its rank are ordered by source, then token.
  detail::PlanExperts<kThreads, kExpertsPerThread>(
      R, p.rank, E, L, [&p](int s, int e) { return InboxCount(p, s, e); },
      // NOTE: fields by value: a reference to the kernel's parameters would copy them to local
      // memory.
      [bases, L, rank = p.rank, counts = p.recv_counts, offsets = p.recv_offsets](
          int e, int offset_in_dest, int before, int total) {
        bases[e] = offset_in_dest + before;
        if (e / L == rank) {
          const int l = e - rank * L;
          counts[l] = total;
          offsets[l] = offset_in_dest;
          if (l == L - 1) offsets[L] = offset_in_dest + total;
        }
      },
      scratch, scratch + kPlanSlots + 1);
  if (first_overflow == INT_MAX) return 0;
  if (threadIdx.x == 0) {
    const int d = first_overflow;
    int rows = 0;
    for (int s = 0; s < R; ++s) rows += InboxCount(p, s, E + d);
    p.error->a = d;
    p.error->b = rows;
    p.error->c = p.recv_capacity;
    p.error->value = 0;
    p.error->value2 = 0;
    p.error->code = kDeviceErrorRowCapacity;
  }
  return kGoSkipData;
}

// Every block, once after go: the destinations' receive buffers, and the leader's plan
// (bases[E + d]: this rank's base row on destination d; bases[e]: its base in expert e's
// gather list there) copied into shared memory, so no row's stores wait on an L2 load of it.
__device__ void LoadDestinations(const HtDispatchParams& p, PeerBuffers* dest, int32_t* bases) {
  for (int d = threadIdx.x; d < p.world_size; d += kThreads) {
    const int slot = InboxCount(p, d, InboxExperts(p) + 1);
    dest[d] = p.peers->handles[slot % kMaxHandleSlots][d];
  }
  const int32_t* planned = detail::SyncBases(SyncOf(p, p.rank));
  for (int i = threadIdx.x; i < p.experts + p.world_size; i += kThreads) {
    bases[i] = __ldcg(planned + i);
  }
  __syncthreads();
}

// Combine rows of every selection: the packed row on the selection's rank at the first k
// selecting that rank, else -1 (rank-major's rule on packed rows).
__device__ void WriteSlots(const HtDispatchParams& p, const int32_t* bases, int n,
                           unsigned ticket) {
  const int K = p.top_k, L = p.local_experts, R = p.world_size;
  for (int i = ticket * kThreads + threadIdx.x; i < n * K; i += gridDim.x * kThreads) {
    const int t = i / K, k = i % K;
    const int e = __ldg(p.topk_idx + i);
    int row = -1;
    if (e >= 0) {
      bool first = true;
      for (int j = 0; j < k && first; ++j) {
        const int ej = __ldg(p.topk_idx + t * K + j);
        first = !(ej >= 0 && ej / L == e / L);
      }
      if (first) row = bases[p.experts + e / L] + __ldg(p.dest_row + t * R + e / L);
    }
    p.slot[i] = row;
  }
}

// Token t's routing as lane k < K of a warp holds it: loaded with the token's first row part
// (or quantized step), in flight beside it, for the metadata of each row the token goes to.
struct LaneRouting {
  int expert = -1;
  float weight = 0.0f;
  int rank_in_expert = -1;
};

__device__ __forceinline__ LaneRouting LoadLaneRouting(const HtDispatchParams& p, int t, int lane) {
  LaneRouting r;
  if (lane < p.top_k) {
    const int i = t * p.top_k + lane;
    r.expert = __ldg(p.topk_idx + i);
    r.weight = __ldg(p.topk_weights + i);
    r.rank_in_expert = __ldg(p.local_rank + i);
  }
  return r;
}

// Row `row` of token t on destination d: its source, local expert ids and weights, and its
// gather-list entries. Whole warp (lanes < K write).
__device__ __forceinline__ void WriteRowMetadata(const HtDispatchParams& p, const PeerBuffers& peer,
                                                 const int32_t* bases, const LaneRouting& routing,
                                                 int64_t row, int t, int d, int lane) {
  const int K = p.top_k, L = p.local_experts;
  if (lane == 0) {
    peer.recv_src[row * 2 + 0] = p.rank;
    peer.recv_src[row * 2 + 1] = t;
  }
  if (lane < K) {
    const int e = routing.expert;
    const bool here = e >= 0 && e / L == d;
    peer.recv_topk_idx[row * K + lane] = here ? e - d * L : -1;
    peer.recv_topk_weights[row * K + lane] = here ? routing.weight : 0.0f;
    // -1: a repeat of the expert in this token, listed once
    if (here && routing.rank_in_expert >= 0) {
      peer.expert_rows[bases[e] + routing.rank_in_expert] = static_cast<int32_t>(row);
    }
  }
}

// kPayloadPrequantized: the frontend's scales of token t beside its e4m3 row (CopyPart moves
// the row). Bit copies: a frontend may pass any pattern.
__device__ __forceinline__ void CopyScales(const HtDispatchParams& p, const PeerBuffers& peer,
                                           int64_t row, int t, int lane) {
  const int blocks = p.hidden / detail::kFp8BlockChannels;
  if (p.ue8m0_scales) {
    const auto* src = static_cast<const uint8_t*>(p.x_scales) + static_cast<int64_t>(t) * blocks;
    uint8_t* dst = static_cast<uint8_t*>(peer.recv_scales) + row * blocks;
    for (int b = lane; b < blocks; b += 32) dst[b] = src[b];
  } else {
    const auto* src = static_cast<const uint32_t*>(p.x_scales) + static_cast<int64_t>(t) * blocks;
    uint32_t* dst = static_cast<uint32_t*>(peer.recv_scales) + row * blocks;
    for (int b = lane; b < blocks; b += 32) dst[b] = src[b];
  }
}

// A warp per (token, row part), tokens outermost so the parts of one row run side by side.
// The part is loaded once, with the token's row on every destination (lane d: rank d's) and,
// for part 0, its routing in flight beside it, then stored to every destination the token
// goes to: one round trip per item, and a token's bytes read once however many ranks it
// reaches. A token that goes nowhere costs its loads.
__device__ void CopyRows(const HtDispatchParams& p, const PeerBuffers* dest, const int32_t* bases,
                         int n, unsigned ticket) {
  static_assert(kMaxRanks <= 32, "a lane per destination rank");
  const int lane = threadIdx.x & 31;
  const int R = p.world_size;
  const int vectors = static_cast<int>(p.row_bytes / 16);
  const int parts = (vectors + kHtVectorsPerPart - 1) / kHtVectorsPerPart;
  // Parts of equal width in whole warps of vectors, so no warp copies a sliver of a row.
  const int part_vectors = ((vectors + parts - 1) / parts + 31) / 32 * 32;
  const int64_t items = static_cast<int64_t>(n) * parts;
  for (int64_t item = static_cast<int64_t>(ticket) * kWarps + (threadIdx.x >> 5); item < items;
       item += static_cast<int64_t>(gridDim.x) * kWarps) {
    const int t = static_cast<int>(item / parts), part = static_cast<int>(item % parts);
    const int my_row = lane < R ? __ldg(p.dest_row + t * R + lane) : -1;
    const LaneRouting routing = part == 0 ? LoadLaneRouting(p, t, lane) : LaneRouting{};
    const int first = part * part_vectors, end = min(first + part_vectors, vectors);
    const int4* src =
        reinterpret_cast<const int4*>(static_cast<const char*>(p.x) + t * p.row_bytes);
    int4 v[kHtVectorsInFlight];
#pragma unroll
    for (int j = 0; j < kHtVectorsInFlight; ++j) {
      const int at = first + j * 32 + lane;
      if (at < end) v[j] = detail::LoadStreaming(src + at);
    }
    const unsigned targets = __ballot_sync(0xffffffffu, my_row >= 0);
    for (unsigned left = targets; left != 0; left &= left - 1) {  // warp-uniform
      const int d = __ffs(left) - 1;
      const int64_t row = bases[p.experts + d] + __shfl_sync(0xffffffffu, my_row, d);
      const PeerBuffers& peer = dest[d];
      int4* dst = reinterpret_cast<int4*>(static_cast<char*>(peer.recv_x) + row * p.row_bytes);
#pragma unroll
      for (int j = 0; j < kHtVectorsInFlight; ++j) {
        const int at = first + j * 32 + lane;
        if (at < end) dst[at] = v[j];
      }
      if (part != 0) continue;
      if (p.payload == kPayloadPrequantized) CopyScales(p, peer, row, t, lane);
      WriteRowMetadata(p, peer, bases, routing, row, t, d, lane);
    }
  }
}

// kPayloadQuantize: a warp per (token, step of four 128-channel blocks) quantizes the step ONCE
// and stores it to every destination rank the token goes to (the row's metadata with step 0),
// instead of quantizing the token again per destination. Tokens that go nowhere cost a load.
__device__ void QuantizeRows(const HtDispatchParams& p, const PeerBuffers* dest,
                             const int32_t* bases, int n, unsigned ticket) {
  static_assert(kMaxRanks <= 32, "a lane per destination rank");
  const int lane = threadIdx.x & 31;
  const int R = p.world_size, steps = DispatchQuantizeSteps(p);
  const int64_t items = static_cast<int64_t>(n) * steps;
  for (int64_t item = static_cast<int64_t>(ticket) * kWarps + (threadIdx.x >> 5); item < items;
       item += static_cast<int64_t>(gridDim.x) * kWarps) {
    const int t = static_cast<int>(item / steps), step = static_cast<int>(item % steps);
    const detail::TokenStepRaw raw = detail::LoadTokenStep(p, t, step, lane);
    const int my_row = lane < R ? __ldg(p.dest_row + t * R + lane) : -1;  // lane d: rank d's
    const LaneRouting routing = step == 0 ? LoadLaneRouting(p, t, lane) : LaneRouting{};
    const unsigned targets = __ballot_sync(0xffffffffu, my_row >= 0);
    if (targets == 0) continue;  // warp-uniform
    const detail::TokenStepPiece piece = detail::QuantizeTokenStep(p, raw, step, lane);
    for (unsigned left = targets; left != 0; left &= left - 1) {
      const int d = __ffs(left) - 1;
      const int64_t row = bases[p.experts + d] + __shfl_sync(0xffffffffu, my_row, d);
      detail::StoreTokenStep(p, dest[d], row, step, piece, lane);
      if (step == 0) WriteRowMetadata(p, dest[d], bases, routing, row, t, d, lane);
    }
  }
}

// kQuantize: p.payload == kPayloadQuantize (LaunchHtDispatch's switch), so the row copy and the
// quantizing loop each get their own registers (one kernel for both slowed the copy ~9%).
template <bool kQuantize>
__global__ void __launch_bounds__(kThreads) HtDispatchKernel(const HtDispatchParams p) {
  __shared__ PeerBuffers dest[kMaxRanks];
  // The leader's planning scratch, then every block's copy of the plan (LoadDestinations).
  __shared__ int32_t shared_ints[kSharedInts];
  int32_t* bases = shared_ints;
  detail::AwaitPriorKernel();
  SyncArea* me = SyncOf(p, p.rank);
  const auto [ticket, seq] = detail::StartOp(me, p.seq, p.seq_floor);
  const int n = *p.bound_tokens;  // written by the routing kernel earlier on this stream
  uint64_t flags;
  if (ticket == 0) {
    flags = kGoAbort;
    uint64_t abandoned;
    if (ExchangeCounts(p, n, seq, &abandoned)) {
      flags = Plan(p, shared_ints);
      if (!detail::ConfirmNoneAbandoned(p.sync, p.world_size, p.rank, seq, abandoned, p.error)) {
        flags = kGoAbort;
      }
    }
    detail::PublishGo(me, seq, flags);
  } else {
    flags = detail::AwaitGo(me, seq, p.timeout_ns);
  }
  if (!(flags & (kGoAbort | kGoSkipData))) {
    LoadDestinations(p, dest, bases);
    WriteSlots(p, bases, n, ticket);
    if constexpr (kQuantize) {
      QuantizeRows(p, dest, bases, n, ticket);
    } else {
      CopyRows(p, dest, bases, n, ticket);
    }
  }
  detail::FinishDispatch(p, me, seq, flags);
}

}  // namespace

cudaError_t LaunchHtDispatch(const HtDispatchParams& params, int blocks, cudaStream_t stream) {
  const int grid = blocks < 1 ? 1 : blocks;
  const bool overlap = params.seq != 0;  // host-numbered: the daemon's streams
  if (params.payload == kPayloadQuantize) {
    return detail::LaunchOverlapped(overlap, &HtDispatchKernel<true>, grid, kThreads, 0, stream,
                                    params);
  }
  return detail::LaunchOverlapped(overlap, &HtDispatchKernel<false>, grid, kThreads, 0, stream,
                                  params);
}

namespace detail {

cudaError_t PreloadHtDispatchKernels() {
  const cudaError_t e = LoadKernel(reinterpret_cast<const void*>(&HtDispatchKernel<false>));
  return e != cudaSuccess ? e : LoadKernel(reinterpret_cast<const void*>(&HtDispatchKernel<true>));
}

}  // namespace detail
}  // namespace epd::kernels
