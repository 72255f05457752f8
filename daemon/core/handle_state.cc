#include "daemon/core/handle_state.h"

namespace epd {

void HandleOutcomes::Record(OpOutcome& outcome, uint64_t op, const Status& status) {
  std::lock_guard lock(mutex_);
  outcome = OpOutcome{op, status};
}

void HandleOutcomes::DeviceError(OpOutcome& outcome, uint64_t op, const Status& error) {
  std::lock_guard lock(mutex_);
  if (outcome.op == op && outcome.status.ok()) outcome.status = error;
}

Status HandleOutcomes::CheckReadyFor(CollectiveKind kind) const {
  std::lock_guard lock(mutex_);
  if (!routing_.status.ok()) {
    return FailedPreconditionError("the last UpdateHandle failed: {}", routing_.status.message());
  }
  if (kind == CollectiveKind::kDispatch) return OkStatus();
  if (dispatch_.op == 0 || dispatch_.op < routing_.op) {
    return FailedPreconditionError(
        "no Dispatch ran on this handle since its last UpdateHandle: dispatch before combine");
  }
  if (!dispatch_.status.ok()) {
    return FailedPreconditionError("the last Dispatch failed: {}", dispatch_.status.message());
  }
  return OkStatus();
}

}  // namespace epd
