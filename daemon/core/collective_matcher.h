// Matches the collective ops of a group across its ranks, NCCL style: the n-th collective a
// rank posts on a group pairs with the n-th of every other rank. Waits are bounded; a rank
// that never comes (timeout) or whose session ended (Abort) fails the op for everyone.
#pragma once

#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "daemon/core/backend.h"
#include "common/status.h"

namespace epd {

enum class CollectiveKind { kDispatch, kCombine };
std::string_view CollectiveKindName(CollectiveKind kind);

// What one rank brings to a collective. `status` not OK means the rank cannot take part
// (its fence wait timed out, its routing is invalid): the whole collective fails with it.
struct CollectivePayload {
  CollectiveKind kind = CollectiveKind::kDispatch;
  Status status;
  DispatchArgs dispatch;
  CombineArgs combine;
  // Keeps the rank's handle and tensors alive until every rank's device work completed.
  std::vector<std::shared_ptr<const void>> keepalive;
};

using MatchedCollective = std::vector<std::shared_ptr<const CollectivePayload>>;

class CollectiveMatcher {
 public:
  CollectiveMatcher(std::string group_name, int world_size);

  // Posts `payload` as this rank's next collective; returns every rank's payload, indexed by
  // group rank, once all arrived. Fails with DEADLINE_EXCEEDED at `deadline`, with the
  // Abort status, or with FAILED_PRECONDITION when the ranks posted different kinds.
  StatusOr<MatchedCollective> Arrive(int group_rank,
                                     std::shared_ptr<const CollectivePayload> payload,
                                     Deadline deadline);

  // Fails every collective that is still waiting and realigns the ranks' sequences, so the
  // group can be used again (e.g. once a restarted frontend re-attaches).
  void Abort(const Status& status);

  uint64_t next_sequence(int group_rank) const;

 private:
  struct Slot {
    MatchedCollective payloads;
    int arrived = 0;
    bool complete = false;
    Status failure;
  };
  std::shared_ptr<Slot> SlotFor(uint64_t sequence);
  void EraseFinishedSlots();

  const std::string group_name_;
  const int world_size_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<uint64_t> next_sequence_;
  std::map<uint64_t, std::shared_ptr<Slot>> slots_;
};

}  // namespace epd
