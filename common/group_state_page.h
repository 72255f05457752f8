// Layout of a group's state page: a small POSIX shared memory object the daemon writes and
// the frontends of a frontend-launched group read before every op (versioned, like the fence
// page). It is how a frontend learns, without an RPC, that the daemon reset the group's
// device synchronisation (a peer's frontend ended mid-op): collectives of the current epoch
// are numbered sequence_base + 1, + 2, ... on every rank, so all ranks restart counting
// together after a reset, above every number an earlier epoch used.
//
// Writer protocol (daemon): store sequence_base, then epoch with release order. Reader:
// load epoch (acquire), sequence_base, then epoch again; equal epochs give a consistent pair.
#pragma once

#include <atomic>
#include <cstdint>

namespace epd {

struct GroupStatePage {
  uint32_t magic;         // kGroupStateMagic
  uint32_t version;       // kGroupStateVersion
  uint32_t header_bytes;  // sizeof(GroupStatePage)
  uint32_t reserved;
  alignas(64) std::atomic<uint64_t> epoch;  // 1 at creation; +1 per reset
  std::atomic<uint64_t> sequence_base;      // op sequence numbers of this epoch start above it
};

static_assert(std::atomic<uint64_t>::is_always_lock_free, "the page is shared across processes");

constexpr uint32_t kGroupStateMagic = 0x53445045;  // "EPDS" little-endian
constexpr uint32_t kGroupStateVersion = 1;
constexpr uint32_t kGroupStatePageBytes = 4096;

// Sequence numbers a reset skips: more than any frontend can have queued on its stream, so a
// stale op of the previous epoch never satisfies a wait of the new one.
constexpr uint64_t kGroupResetSequenceGap = uint64_t{1} << 20;

}  // namespace epd
