// SyncArea: the per-(group, rank) device memory through which the ranks of a group meet.
//
// Peers write into it over NVLink (peer pointers), the owning rank's blocks read it. Every
// flag carries the group's op sequence number, so nothing is ever reset between ops:
//  - done[s]  >= seq: source s wrote all of its dispatch rows here;
//  - start[s] >= seq: rank s entered combine (its expert output is final);
//  - end[s]   >= seq: rank s finished reading expert outputs in combine;
//  - inbox[s][e] = (seq << 32) | count: rank s's selections of expert e (e == E: its token
//    count), self-validating so counts need no separate flag.
// `control` is local only: block tickets and the leader's go word of the running op.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/limits.h"

namespace epd::kernels {

constexpr int kMaxRanks = 8;  // GPUs of one node reached with peer pointers
static_assert(kMaxRanks == epd::kMaxRanks, "common/limits.h is what the host checks against");

struct alignas(128) SyncControl {
  uint64_t go;          // (seq << 2) | SyncGoFlags, published by the leader block
  unsigned int arrive;  // tickets handed out to blocks of the running op
  unsigned int finish;  // blocks of the running op that finished their rows
};

enum SyncGoFlags : uint64_t {
  kGoAbort = 1,     // a peer timed out: write nothing more, publish nothing
  kGoSkipData = 2,  // capacity overflow: write no rows, but complete the protocol
};

struct SyncArea {
  SyncControl control;
  alignas(128) uint64_t done[kMaxRanks];
  alignas(128) uint64_t start[kMaxRanks];
  alignas(128) uint64_t end[kMaxRanks];
  // followed by: int32 bases[experts]; uint64 inbox[ranks][experts + 1]
};

constexpr size_t SyncBasesOffset() { return (sizeof(SyncArea) + 127) / 128 * 128; }
constexpr size_t SyncInboxOffset(int experts) {
  return (SyncBasesOffset() + sizeof(int32_t) * experts + 127) / 128 * 128;
}
constexpr size_t SyncAreaBytes(int ranks, int experts) {
  return SyncInboxOffset(experts) + sizeof(uint64_t) * ranks * (experts + 1);
}

}  // namespace epd::kernels
