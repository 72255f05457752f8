// Handle: one rank's use of a group (its backend buffers and group membership), and the
// outcome state machine that keeps ops from running on routing or slots that failed:
// a dispatch needs the latest update to have succeeded, a combine needs a successful
// dispatch after it. A device error that Complete() reports after the op was answered
// still counts, as long as no newer op of that kind replaced the outcome.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "daemon/core/backend.h"
#include "daemon/core/backend.h"
#include "daemon/core/engine.h"
#include "daemon/core/group_registry.h"

namespace epd {

// What the latest executed op of one kind ended with.
struct OpOutcome {
  uint64_t op = 0;  // the handle's op number; 0: never ran
  Status status;
};

class HandleOutcomes {
 public:
  // Numbers the next op executed on the handle (rank worker only).
  uint64_t BeginOp() { return ++executed_ops_; }
  void RecordRouting(uint64_t op, const Status& status) { Record(routing_, op, status); }
  void RecordDispatch(uint64_t op, const Status& status) { Record(dispatch_, op, status); }
  void RoutingDeviceError(uint64_t op, const Status& error) { DeviceError(routing_, op, error); }
  void DispatchDeviceError(uint64_t op, const Status& error) { DeviceError(dispatch_, op, error); }
  // OK when an op of `kind` may run now.
  Status CheckReadyFor(CollectiveKind kind) const;

 private:
  void Record(OpOutcome& outcome, uint64_t op, const Status& status);
  void DeviceError(OpOutcome& outcome, uint64_t op, const Status& error);

  uint64_t executed_ops_ = 0;  // rank worker only
  mutable std::mutex mutex_;
  OpOutcome routing_, dispatch_;  // guarded by mutex_
};

struct Handle {
  std::string name;  // empty unless persistent
  bool persistent = false;
  std::shared_ptr<Group> group;
  int node_rank = 0;
  int group_rank = 0;
  std::unique_ptr<BackendHandle> backend;
  // Counts the handle in its group from creation until it is destroyed (persistent) or
  // leaves its session (the others); destroying the handle uncounts it in any case.
  GroupMembership membership;
  std::atomic<SessionId> attached_to{0};  // session using it; 0: none
  // n of the last accepted UpdateHandle; -1 before the first (no routing bound).
  std::atomic<int> submitted_tokens{-1};
  // A Dispatch was accepted since the last UpdateHandle: a combine without one is refused
  // at submission instead of after waiting for its peers.
  std::atomic<bool> dispatch_posted{false};
  HandleOutcomes outcomes;

  bool bound() const { return submitted_tokens.load() >= 0; }
};

}  // namespace epd
