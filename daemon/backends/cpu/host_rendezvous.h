// HostRendezvous: where the cpu backend's ranks meet for one collective op, on their execution
// threads (the cpu stand-in for a GPU stream), like the cuda kernels meet through device flags.
//
// Sequence numbers are taken when a rank enqueues its op (TakeSequence, on the engine's worker);
// the op's execution thread later calls Arrive (publishes its part, waits for every peer's),
// does its work reading the peers' parts, then Leave (waits until no peer still reads its
// memory). Waits for arrivals are bounded by the timeout and released at once by Abandon (a
// rank gives up its op), Abort (a member's session ended) or Shutdown. A timeout fails only
// that op: a rank that arrives late still takes the op's number and fails at once, so the
// group's later ops line up again.
//
// NOTE: once every rank arrived, every rank reads its peers' memory (the op is *met*), and no
// rank leaves before all finished reading — not on an abort, a shutdown or a timeout: a rank
// that left would let its memory go (its session's buffers are unmapped once its op ends)
// while a peer still copies from it. The reading never waits on anything, so this ends; past
// the timeout the op fails, but only once the last reader is done.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/status.h"
#include "daemon/core/backend.h"

namespace epd {

class HostRendezvous {
 public:
  HostRendezvous(std::string group_name, int world_size);

  // The number of `rank`'s next collective.
  uint64_t TakeSequence(int rank);

  // Publishes `part` as `rank`'s part of op `seq` and returns every rank's part, indexed by
  // group rank, once all arrived. Fails with DEADLINE_EXCEEDED naming the missing group ranks
  // after `timeout`, with the status a peer abandoned the op with, with the abort status, or
  // FAILED_PRECONDITION when ranks posted different kinds.
  StatusOr<std::vector<const void*>> Arrive(int rank, uint64_t seq, CollectiveKind kind,
                                            const void* part, std::chrono::milliseconds timeout);
  // After `rank`'s work on op `seq`: waits until every rank finished reading its peers' parts.
  // DEADLINE_EXCEEDED when that took longer than `timeout` (returned after the wait); an abort
  // or a shutdown after the op met does not fail it (its work is done).
  Status Leave(int rank, uint64_t seq, std::chrono::milliseconds timeout);
  // `rank` will not take part in op `seq`: the peers fail it with `reason`, naming the rank.
  void Abandon(int rank, uint64_t seq, CollectiveKind kind, const Status& reason);

  // Fails every op numbered so far that has not met (waiting or not yet arrived) with `reason`
  // and realigns the ranks' numbers, so the next op of every rank is the same op again.
  void Abort(const Status& reason);
  // Fails every current and future wait with UNAVAILABLE.
  void Shutdown();

 private:
  struct Slot {
    std::vector<const void*> parts;
    std::vector<bool> arrived;
    CollectiveKind kind = CollectiveKind::kDispatch;
    int arrivals = 0;
    bool met = false;  // every rank arrived with no failure: every rank reads the parts
    int left = 0;
    std::vector<bool> left_ranks;
    Status failure;
  };
  std::shared_ptr<Slot> SlotLocked(uint64_t seq);
  void EraseFinishedLocked();
  Status StoppedLocked(uint64_t seq) const;  // OK unless shut down or aborted through seq
  std::string MissingLocked(const Slot& slot) const;

  const std::string group_name_;
  const int world_size_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<uint64_t> issued_;  // per rank: the last sequence number taken
  std::map<uint64_t, std::shared_ptr<Slot>> slots_;
  uint64_t aborted_through_ = 0;
  std::deque<std::pair<uint64_t, Status>> aborts_;  // (aborted_through_, reason), recent first
  bool shut_down_ = false;
};

}  // namespace epd
