// SyncArea: the per-(group, rank) device memory through which the ranks of a group meet.
//
// Peers write into it over NVLink (peer pointers), the owning rank's blocks read it. Every
// flag carries the group's op sequence number, so nothing is ever reset between ops:
//  - done[s]  >= seq: source s wrote all of its dispatch rows here;
//  - start[s] >= seq: rank s entered combine (its expert output is final);
//  - end[s]   >= seq: rank s finished reading expert outputs in combine;
//  - inbox[s][e] = (seq << 32) | count: rank s's selections of expert e (e == E: its token
//    count; e == E + 1: the handle slot its receive buffers are published in), self-validating
//    so counts need no separate flag;
//  - abandoned[s] >= seq while s's flag of op seq is missing: rank s gave up that op (it timed
//    out, was aborted, or rejected its own arguments), so nobody waits for it any longer;
//  - blamed[s]: 1 + the group rank s timed out waiting for (0: it gave up for another reason);
//  - expert_out[s]: rank s's combine input of the op whose start flag it precedes.
// `control` is local only: block tickets and the leader's go word of the running op, and
// `seq`, the number of the last collective this rank ran (its last block writes it), from
// which device-numbered ops (a launch with seq 0: frontend-launched, graph-replayable) take
// their own number, so a replayed graph gets fresh numbers without the host.
//
// PeerTable: per (group, rank), in device memory on that rank's GPU. The host writes it when
// the group is created (every rank's SyncArea) and when a handle is created or destroyed (its
// receive buffers, in the handle's slot); ops pass a pointer to it, plus the SyncAreas by value.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/limits.h"

namespace epd::kernels {

constexpr int kMaxRanks = 8;  // GPUs of one node reached with peer pointers
static_assert(kMaxRanks == epd::kMaxRanks, "common/limits.h is what the host checks against");
constexpr int kMaxHandleSlots = 128;  // live handles per (group, rank), e.g. one per layer

struct alignas(128) SyncControl {
  uint64_t go;          // (seq << kGoFlagBits) | SyncGoFlags, published by the leader block
  unsigned int arrive;  // tickets handed out to blocks of the running op
  unsigned int finish;  // blocks of the running op that finished their rows
  uint64_t seq;         // sequence number of the last collective this rank ran
};

// go = (seq << kGoFlagBits) | SyncGoFlags.
enum SyncGoFlags : uint64_t {
  kGoAbort = 1,     // a peer timed out: write nothing more, publish nothing
  kGoSkipData = 2,  // capacity overflow: write no rows, but complete the protocol
  // dispatch: some destination's receive buffers of this op are not in this rank's own handle
  // slot, so the blocks' guess of their destinations (made before go) must be reloaded
  kGoSlotsDiffer = 4,
};
constexpr int kGoFlagBits = 3;
constexpr uint64_t GoSeq(uint64_t go) { return go >> kGoFlagBits; }

struct SyncArea {
  SyncControl control;
  alignas(128) uint64_t done[kMaxRanks];
  alignas(128) uint64_t start[kMaxRanks];
  alignas(128) uint64_t end[kMaxRanks];
  alignas(128) uint64_t abandoned[kMaxRanks];
  alignas(128) uint64_t blamed[kMaxRanks];  // 1 + the rank s waited for when it gave up; 0: none
  alignas(128) uint64_t expert_out[kMaxRanks];
  // followed by: int32 bases[experts]; uint64 inbox[ranks][experts + 2]
};

// One rank's receive buffers, as pointers valid on every GPU of the group.
struct PeerBuffers {
  void* recv_x = nullptr;
  int32_t* recv_src = nullptr;         // expert-major
  float* recv_weights = nullptr;       // expert-major
  int32_t* recv_topk_idx = nullptr;    // rank-major
  float* recv_topk_weights = nullptr;  // rank-major
  void* recv_scales = nullptr;         // fp8 dispatch: [rows, hidden / 128]
  int32_t* expert_rows = nullptr;      // high-throughput: the gather list
};

// Every rank's SyncArea, valid on every GPU of the group and fixed for the group's life. Ops
// pass it by value in their launch parameters: every block reads it first thing, and a load
// from the PeerTable there would put one more dependent memory round trip on every op's
// critical path.
struct SyncAreas {
  void* area[kMaxRanks];
  // Some rank of the group runs on another GPU: rows and flags written there are fenced at
  // system scope. When every rank shares this GPU a GPU-scope fence orders them for every
  // reader on it (other processes' kernels on the GPU included; the op's fence signal, a
  // GPU-scope release after them, is read on this GPU only) at a fraction of the cost: a system-scope fence in each of
  // a dispatch's blocks took 1.7 us in-process and 3.8 us in the daemon on an H200, against
  // 0.9 us at GPU scope.
  bool spans_gpus = false;
};

struct PeerTable {
  void* sync[kMaxRanks];                            // every rank's SyncArea (as SyncAreas)
  PeerBuffers handles[kMaxHandleSlots][kMaxRanks];  // [slot][group rank]
};

// An op's fence signal: its last block writes `value` to `counter` at its very end, whatever the
// op's outcome, as a stream write after the op would (kernels/internal/device_sync.cuh,
// SignalFenceFromDevice). counter null: the op signals nothing.
struct DeviceFenceSignal {
  uint64_t* counter = nullptr;
  uint64_t value = 0;
};

constexpr int SyncInboxStride(int experts) { return experts + 2; }

constexpr size_t SyncBasesOffset() { return (sizeof(SyncArea) + 127) / 128 * 128; }
constexpr size_t SyncInboxOffset(int experts) {
  return (SyncBasesOffset() + sizeof(int32_t) * experts + 127) / 128 * 128;
}
constexpr size_t SyncAreaBytes(int ranks, int experts) {
  return SyncInboxOffset(experts) + sizeof(uint64_t) * ranks * SyncInboxStride(experts);
}

}  // namespace epd::kernels
