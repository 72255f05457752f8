// Device-only helpers shared by the kernels' .cu files (never included by host code):
// scoped loads/stores for flags, the global timer for bounded waits, 16-byte row copies,
// and the ticket / leader / finish protocol every collective kernel follows.
#pragma once

#include <cstdint>

#include "kernels/device_error.cuh"
#include "kernels/sync_area.cuh"

namespace epd::kernels::detail {

__device__ __forceinline__ uint64_t GlobalTimerNs() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__device__ __forceinline__ uint64_t LoadAcquireSys(const uint64_t* p) {
  uint64_t v;
  asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ uint64_t LoadRelaxedSys(const uint64_t* p) {
  uint64_t v;
  asm volatile("ld.relaxed.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ uint64_t LoadAcquireGpu(const uint64_t* p) {
  uint64_t v;
  asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void StoreReleaseSys(uint64_t* p, uint64_t v) {
  asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}
__device__ __forceinline__ void StoreRelaxedSys(uint64_t* p, uint64_t v) {
  asm volatile("st.relaxed.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}
__device__ __forceinline__ void StoreReleaseGpu(uint64_t* p, uint64_t v) {
  asm volatile("st.release.gpu.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

// Read-only input (never written while the kernel runs): non-coherent path, no L1 pollution.
__device__ __forceinline__ int4 LoadStreaming(const int4* p) {
  int4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.s32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ SyncArea* AsSync(void* p) { return static_cast<SyncArea*>(p); }
__device__ __forceinline__ int32_t* SyncBases(void* p) {
  return reinterpret_cast<int32_t*>(static_cast<char*>(p) + SyncBasesOffset());
}
__device__ __forceinline__ uint64_t* SyncInbox(void* p, int experts) {
  return reinterpret_cast<uint64_t*>(static_cast<char*>(p) + SyncInboxOffset(experts));
}

// A warp copies one row of `vectors` 16-byte vectors; four loads in flight per lane.
__device__ __forceinline__ void WarpCopyRow(int4* dst, const int4* src, int vectors, int lane) {
  int v = lane;
  for (; v + 96 < vectors; v += 128) {
    const int4 a = LoadStreaming(src + v), b = LoadStreaming(src + v + 32),
               c = LoadStreaming(src + v + 64), d = LoadStreaming(src + v + 96);
    dst[v] = a;
    dst[v + 32] = b;
    dst[v + 64] = c;
    dst[v + 96] = d;
  }
  for (; v < vectors; v += 32) dst[v] = LoadStreaming(src + v);
}

__device__ __forceinline__ void WarpZeroRow(int4* dst, int vectors, int lane) {
  const int4 zero = make_int4(0, 0, 0, 0);
  for (int v = lane; v < vectors; v += 32) dst[v] = zero;
}

__device__ __forceinline__ void ReportPeerTimeout(DeviceError* error, int phase, int peer,
                                                  uint64_t seq, uint64_t seen) {
  error->a = phase;
  error->b = peer;
  error->c = 0;
  error->value = static_cast<int64_t>(seq);
  error->value2 = static_cast<int64_t>(seen);
  error->code = kDeviceErrorPeerTimeout;
}

// Why a bounded wait ended.
enum WaitResult : int { kWaitOk = 0, kWaitTimeout, kWaitAbandoned, kWaitAborted };

// The host's abort word (host-mapped memory, NCCL's abortFlag model): op seq gives up once the
// word reaches seq. The daemon raises it when a member's session ends (to the newest op
// issued) and at shutdown (to the maximum). Read over PCIe, so spin loops poll it only every
// kAbortPollSpins iterations.
constexpr unsigned kAbortPollSpins = 64;
__device__ __forceinline__ bool Aborted(const uint64_t* abort, uint64_t seq) {
  return abort != nullptr && LoadRelaxedSys(abort) >= seq;
}

// Why a wait for peer `peer`'s flag of op `seq` should stop before it arrives, or kWaitOk to
// go on spinning. `spins` counts the caller's iterations.
__device__ __forceinline__ int CheckWait(const SyncArea* me, int peer, uint64_t seq,
                                         const uint64_t* abort, uint64_t start, uint64_t timeout_ns,
                                         unsigned spins, uint64_t abort_at = 0) {
  if (me != nullptr && LoadRelaxedSys(&me->abandoned[peer]) >= seq) return kWaitAbandoned;
  if (spins % kAbortPollSpins == 0 && Aborted(abort, abort_at != 0 ? abort_at : seq)) {
    return kWaitAborted;
  }
  if (GlobalTimerNs() - start > timeout_ns) return kWaitTimeout;
  return kWaitOk;
}

// Spins (one thread) until *flag >= seq, peer `peer` of `me` gave up the op, the abort word
// reaches abort_at (default: seq), or timeout_ns passed; returns why it stopped.
__device__ __forceinline__ int WaitFlagAtLeast(const uint64_t* flag, uint64_t seq,
                                               uint64_t timeout_ns, uint64_t* seen,
                                               const SyncArea* me, int peer, const uint64_t* abort,
                                               uint64_t abort_at = 0) {
  const uint64_t start = GlobalTimerNs();
  uint64_t v = LoadAcquireSys(flag);
  for (unsigned spins = 1; v < seq; ++spins) {
    const int why = CheckWait(me, peer, seq, abort, start, timeout_ns, spins, abort_at);
    if (why != kWaitOk) {
      *seen = v;
      return why;
    }
    __nanosleep(64);
    v = LoadAcquireSys(flag);
  }
  return kWaitOk;
}

// Writes the op's error record for a wait on `peer` that ended with `why` (not kWaitOk).
// For an abandoned wait, c = whom the peer blamed (SyncArea::blamed).
__device__ __forceinline__ void ReportWaitFailure(DeviceError* error, int why, int phase, int peer,
                                                  uint64_t seq, uint64_t seen, const SyncArea* me) {
  if (why == kWaitTimeout) {
    ReportPeerTimeout(error, phase, peer, seq, seen);
    return;
  }
  error->a = phase;
  error->b = peer;
  error->c = 0;
  if (why == kWaitAbandoned && me != nullptr) {
    __threadfence_system();  // pairs with PublishAbandoned's fence: blamed is visible
    error->c = static_cast<int32_t>(LoadRelaxedSys(&me->blamed[peer]));
  }
  error->value = static_cast<int64_t>(seq);
  error->value2 = static_cast<int64_t>(seen);
  error->code = why == kWaitAbandoned ? kDeviceErrorPeerAbandoned : kDeviceErrorAborted;
}

// This rank gives up op seq: every peer stops waiting for its flags of that op at once.
// blamed: the group rank it timed out waiting for, or -1.
__device__ __forceinline__ void PublishAbandoned(const SyncAreas& sync, int world_size, int rank,
                                                 uint64_t seq, int blamed) {
  for (int d = 0; d < world_size; ++d) {
    StoreRelaxedSys(&AsSync(sync.area[d])->blamed[rank], static_cast<uint64_t>(blamed + 1));
  }
  __threadfence_system();
  for (int d = 0; d < world_size; ++d) {
    StoreRelaxedSys(&AsSync(sync.area[d])->abandoned[rank], seq);
  }
}

// The op's fence signal, written by its last block once everything the op wrote (and, for a
// collective, every peer's rows or reads it waited for) is visible: the stream write the
// signal would otherwise be, one stream operation less per fenced op.
// NOTE: a GPU-scope release: a fence page lives on the GPU of the ops that use it, and only
// work on that GPU waits on it (the daemon's fence waits; a frontend's stream waits, which the
// client's contract keeps on that GPU: client/epd/cuda.h). At system scope the release cost ~1.5 us more
// per op in the daemon on an H200 (measured under MPS: fenced overhead +5.5 vs +4.3 us).
__device__ __forceinline__ void SignalFenceFromDevice(const DeviceFenceSignal& signal) {
  if (signal.counter != nullptr) StoreReleaseGpu(signal.counter, signal.value);
}

// What a block learns as it starts an op: its ticket and the op's sequence number.
struct OpStart {
  unsigned ticket;
  uint64_t seq;
};

// Block ticket: the first block to arrive (not blockIdx 0, which may not be resident yet)
// leads the op, so no block ever waits for a block that has not been scheduled.
// Sequence number, the same in every block: the launcher's (host_seq != 0), or for a
// device-numbered op one above the larger of the last collective this rank ran and `floor`
// (the epoch's sequence base: the counter may be older than the epoch). Every block reads it
// before it finishes, and the counter moves only once the last block finished (FinishBlock),
// so no block sees the op's own number advanced.
__device__ __forceinline__ OpStart StartOp(SyncArea* me, uint64_t host_seq, uint64_t floor) {
  __shared__ unsigned ticket;
  __shared__ uint64_t seq;
  if (threadIdx.x == 0) {
    // NOTE: the counter was written by an earlier kernel of this stream: visible. Loaded
    // before the ticket's atomic so that both round trips overlap.
    const uint64_t last =
        host_seq != 0 ? 0 : *static_cast<const volatile uint64_t*>(&me->control.seq);
    ticket = atomicAdd(&me->control.arrive, 1u);
    seq = host_seq != 0 ? host_seq : (last > floor ? last : floor) + 1;
  }
  __syncthreads();
  return OpStart{ticket, seq};
}

// Leader: publish the go word (after all of the leader's writes are visible on this GPU).
// NOTE: no fence before the store: the barrier orders the block's writes before thread 0's
// release store, which is cumulative, and the followers read the word with acquire loads.
__device__ __forceinline__ void PublishGo(SyncArea* me, uint64_t seq, uint64_t flags) {
  __syncthreads();
  if (threadIdx.x == 0) {
    StoreReleaseGpu(&me->control.go, (seq << kGoFlagBits) | flags);
  }
}

// Followers: wait for the leader's go word; returns its flags. The leader is running (it
// took the first ticket) and bounded by timeout_ns itself, so this wait is bounded too.
// NOTE: no abort word here: the leader polls it and then publishes go at once; a follower that
// gave up alone would leave its rows unwritten under a go the leader may still publish.
__device__ __forceinline__ uint64_t AwaitGo(SyncArea* me, uint64_t seq, uint64_t timeout_ns) {
  __shared__ uint64_t flags;
  if (threadIdx.x == 0) {
    const uint64_t start = GlobalTimerNs();
    uint64_t v = LoadAcquireGpu(&me->control.go);
    while (GoSeq(v) < seq) {
      if (GlobalTimerNs() - start > 2 * timeout_ns + 1000000000ull) {
        v = (seq << kGoFlagBits) | kGoAbort;  // never observed: the leader reports its own timeout
        break;
      }
      __nanosleep(32);
      v = LoadAcquireGpu(&me->control.go);
    }
    flags = v & ((uint64_t{1} << kGoFlagBits) - 1);
  }
  __syncthreads();
  return flags;
}

// Orders the calling thread's earlier writes before its later ones for every reader in the
// group: system scope when a rank runs on another GPU, else GPU scope (SyncAreas::spans_gpus).
__device__ __forceinline__ void FenceForGroup(bool spans_gpus) {
  if (spans_gpus) {
    __threadfence_system();
  } else {
    __threadfence();
  }
}

// Every block calls this after its rows: true in exactly one block, the last to finish,
// which has then seen (through the counter) every other block's work. remote_stores: the
// blocks wrote another GPU's memory, which must be visible system-wide before the caller's
// flags (false: every store stayed on this GPU).
// It also resets the ticket counters for the next op on this stream and records op `seq` as
// the last collective this rank ran (OpSequence).
__device__ __forceinline__ bool FinishBlock(SyncArea* me, bool remote_stores, uint64_t seq) {
  __shared__ bool last;
  // NOTE: one fence by thread 0 after the barrier covers the whole block's stores: the
  // barrier orders them before it, and the fence is cumulative.
  __syncthreads();
  if (threadIdx.x == 0) {
    FenceForGroup(remote_stores);
    const unsigned old = atomicAdd(&me->control.finish, 1u);
    last = old == gridDim.x - 1;
    if (last) {
      FenceForGroup(remote_stores);
      me->control.finish = 0;
      me->control.arrive = 0;
      me->control.seq = seq;
    }
  }
  __syncthreads();
  return last;
}

}  // namespace epd::kernels::detail
