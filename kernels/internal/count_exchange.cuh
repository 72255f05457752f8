// The exchanges that open and close both dispatch kernels (low-latency and high-throughput):
// the leader block posts this rank's inbox entries into every peer's SyncArea, tagged with the
// op's sequence number, and waits until every peer's entries of the same op arrived here; the
// last block tells every destination this rank's rows are there and waits for every source's.
// Device-only; included by the kernels' .cu files.
#pragma once

#include <climits>
#include <cstdint>

#include "kernels/internal/device_sync.cuh"

namespace epd::kernels::detail {

// Whole leader block. `value(e)` is this rank's entry e of `stride` (the same for every
// destination). Returns false (error written, peers told) when a wait failed.
template <int kThreads, typename Value>
__device__ bool ExchangeInbox(const PeerTable* peers, int world_size, int rank, int inbox_experts,
                              uint64_t seq, const uint64_t* abort, uint64_t timeout_ns,
                              DeviceError* error, Value value) {
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
    uint64_t* inbox = SyncInbox(peers->sync[d], inbox_experts);
    StoreRelaxedSys(inbox + rank * stride + e,
                    (uint64_t{seq32} << 32) | static_cast<uint32_t>(value(e)));
  }
  SyncArea* me = AsSync(peers->sync[rank]);
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
  // must not receive rows: it may already run its next op.
  for (int s = threadIdx.x; s < R; s += kThreads) {
    if (LoadRelaxedSys(&me->abandoned[s]) >= seq) {
      atomicMin(&failed_peer, s);
      atomicMax(&failure, static_cast<int>(kWaitAbandoned));
    }
  }
  __syncthreads();
  if (failed_peer != INT_MAX) {
    if (threadIdx.x == 0) {
      const uint64_t seen = my_inbox[failed_peer * stride] >> 32;
      ReportWaitFailure(error, failure, kSyncPhaseCounts, failed_peer, seq, seen, me);
      PublishAbandoned(peers, R, rank, seq, failure == kWaitTimeout ? failed_peer : -1);
    }
    return false;
  }
  return true;  // PublishGo fences before any block writes a row
}

// Thread 0 of the last block to finish (FinishBlock fenced every block's rows at system scope,
// so plain flag stores suffice): done[rank] = seq on every destination, then a bounded wait
// until every source set done here. On a failed wait, the error is written and peers told.
__device__ __forceinline__ void PublishDoneAndAwaitSources(const PeerTable* peers, int world_size,
                                                           int rank, uint64_t seq,
                                                           const uint64_t* abort,
                                                           uint64_t timeout_ns,
                                                           DeviceError* error) {
  for (int d = 0; d < world_size; ++d) {
    StoreRelaxedSys(&AsSync(peers->sync[d])->done[rank], seq);
  }
  SyncArea* me = AsSync(peers->sync[rank]);
  for (int s = 0; s < world_size; ++s) {
    uint64_t seen = 0;
    const int why = WaitFlagAtLeast(&me->done[s], seq, timeout_ns, &seen, me, s, abort);
    if (why != kWaitOk) {
      ReportWaitFailure(error, why, kSyncPhaseDone, s, seq, seen, me);
      PublishAbandoned(peers, world_size, rank, seq, why == kWaitTimeout ? s : -1);
      return;
    }
  }
}

}  // namespace epd::kernels::detail
