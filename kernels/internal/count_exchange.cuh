// The exchanges that open and close both dispatch kernels (low-latency and high-throughput):
// the leader block posts this rank's inbox entries into every peer's SyncArea, tagged with the
// op's sequence number, and waits until every peer's entries of the same op arrived here; the
// last block tells every destination this rank's rows are there and waits for every source's.
// Device-only; included by the kernels' .cu files.
#pragma once

#include <climits>
#include <cstdint>

#include "kernels/collective_launch.cuh"
#include "kernels/internal/device_sync.cuh"

namespace epd::kernels::detail {

// Whole leader block. `value(e)` is this rank's entry e of `stride` (the same for every
// destination). Returns false (error written, peers told) when a wait failed. Else thread
// s < R holds in `*abandoned` its load of abandoned[s], issued but not yet awaited, for
// ConfirmNoneAbandoned just before go: the leader's planning hides that round trip.
template <int kThreads, typename Value>
__device__ bool ExchangeInbox(const SyncAreas& sync, int world_size, int rank, int inbox_experts,
                              uint64_t seq, const uint64_t* abort, uint64_t timeout_ns,
                              DeviceError* error, Value value, uint64_t* abandoned) {
  __shared__ int failed_peer;
  __shared__ int failure;
  const int R = world_size, stride = SyncInboxStride(inbox_experts);
  const uint32_t seq32 = static_cast<uint32_t>(seq);
  if (threadIdx.x == 0) {
    failed_peer = INT_MAX;
    failure = kWaitOk;
  }
  __syncthreads();
  // NOTE: no fence before publishing: earlier work on this stream ended with its kernels.
  for (int i = threadIdx.x; i < R * stride; i += kThreads) {
    const int d = i / stride, e = i % stride;
    uint64_t* inbox = SyncInbox(sync.area[d], inbox_experts);
    StoreRelaxedSys(inbox + rank * stride + e,
                    (uint64_t{seq32} << 32) | static_cast<uint32_t>(value(e)));
  }
  SyncArea* me = AsSync(sync.area[rank]);
  uint64_t* my_inbox = SyncInbox(me, inbox_experts);
  const uint64_t start = GlobalTimerNs();
  for (int i = threadIdx.x; i < R * stride; i += kThreads) {
    uint64_t v = LoadRelaxedSys(my_inbox + i);
    for (unsigned spins = 1; static_cast<uint32_t>(v >> 32) != seq32; ++spins) {
      const int why = CheckWait(me, i / stride, seq, abort, start, timeout_ns, spins);
      if (why != kWaitOk) {
        atomicMin(&failed_peer, i / stride);
        atomicMax(&failure, why);
        break;
      }
      __nanosleep(32);
      v = LoadRelaxedSys(my_inbox + i);
    }
  }
  // A peer that published its counts and then gave up (it timed out waiting for this rank)
  // must not receive rows: it may already run its next op. Read after its counts were seen.
  *abandoned = 0;
  if (threadIdx.x < R) *abandoned = LoadRelaxedSys(&me->abandoned[threadIdx.x]);
  __syncthreads();
  if (failed_peer != INT_MAX) {
    if (threadIdx.x == 0) {
      const uint64_t seen = my_inbox[failed_peer * stride] >> 32;
      ReportWaitFailure(error, failure, kSyncPhaseCounts, failed_peer, seq, seen, me);
      PublishAbandoned(sync, R, rank, seq, failure == kWaitTimeout ? failed_peer : -1);
    }
    return false;
  }
  return true;  // PublishGo fences before any block writes a row
}

// Whole leader block, after ExchangeInbox succeeded: false (error written, peers told) when a
// peer had given up the op by the time its counts were seen. One barrier when none did.
__device__ __forceinline__ bool ConfirmNoneAbandoned(const SyncAreas& sync, int world_size,
                                                     int rank, uint64_t seq, uint64_t abandoned,
                                                     DeviceError* error) {
  const bool gave_up = threadIdx.x < world_size && abandoned >= seq;
  if (!__syncthreads_or(gave_up)) return true;
  __shared__ int first;
  if (threadIdx.x == 0) first = INT_MAX;
  __syncthreads();
  if (gave_up) atomicMin(&first, threadIdx.x);
  __syncthreads();
  if (threadIdx.x == 0) {
    SyncArea* me = AsSync(sync.area[rank]);
    ReportWaitFailure(error, kWaitAbandoned, kSyncPhaseCounts, first, seq, seq, me);
    PublishAbandoned(sync, world_size, rank, seq, -1);
  }
  return false;
}

// Thread 0 of the last block to finish (FinishBlock fenced every block's rows for the group,
// so plain flag stores suffice): done[rank] = seq on every destination, then a bounded wait
// until every source set done here. On a failed wait, the error is written and peers told.
__device__ __forceinline__ void PublishDoneAndAwaitSources(const SyncAreas& sync, int world_size,
                                                           int rank, uint64_t seq,
                                                           const uint64_t* abort,
                                                           uint64_t timeout_ns,
                                                           DeviceError* error) {
  for (int d = 0; d < world_size; ++d) {
    StoreRelaxedSys(&AsSync(sync.area[d])->done[rank], seq);
  }
  SyncArea* me = AsSync(sync.area[rank]);
  for (int s = 0; s < world_size; ++s) {
    uint64_t seen = 0;
    const int why = WaitFlagAtLeast(&me->done[s], seq, timeout_ns, &seen, me, s, abort);
    if (why != kWaitOk) {
      ReportWaitFailure(error, why, kSyncPhaseDone, s, seq, seen, me);
      PublishAbandoned(sync, world_size, rank, seq, why == kWaitTimeout ? s : -1);
      return;
    }
  }
}

// Every block of a dispatch kernel, after its rows: the last one to finish tells every
// destination this rank's rows are there and waits for every source's (unless the op was
// aborted), then writes the op's fence signal, whatever the outcome.
__device__ __forceinline__ void FinishDispatch(const CollectiveLaunch& p, SyncArea* me,
                                               uint64_t seq, uint64_t go_flags) {
  if (!FinishBlock(me, /*remote_stores=*/p.sync.spans_gpus, seq)) return;
  if (threadIdx.x == 0) {
    if (!(go_flags & kGoAbort)) {
      PublishDoneAndAwaitSources(p.sync, p.world_size, p.rank, seq, p.abort, p.timeout_ns,
                                 p.error);
    }
    SignalFenceFromDevice(p.signal);
  }
}

}  // namespace epd::kernels::detail
