#include "daemon/core/handle_state.h"

#include <fmt/format.h>

#include <string>
#include <string_view>

#include "common/utf8.h"

namespace epd {
namespace {

// An earlier failure as a new one names it. NOTE: that failure may itself name an earlier one
// (ranks that keep refusing each other's ops pass the reason back and forth, a level per op),
// so it is bounded: its head (the op just before) and its tail (where the chain began).
std::string EarlierReason(std::string_view message) {
  constexpr size_t kHead = 160, kTail = 320;
  if (message.size() <= kHead + kTail) return std::string(message);
  const size_t head = Utf8StartAtOrBefore(message, kHead);
  const size_t tail = Utf8StartAtOrAfter(message, message.size() - kTail);
  return fmt::format("{} ... {}", message.substr(0, head), message.substr(tail));
}

}  // namespace

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
    return FailedPreconditionError("the last UpdateHandle failed: {}",
                                   EarlierReason(routing_.status.message()));
  }
  if (kind == CollectiveKind::kDispatch) return OkStatus();
  if (dispatch_.op == 0 || dispatch_.op < routing_.op) {
    return FailedPreconditionError(
        "no Dispatch ran on this handle since its last UpdateHandle: dispatch before combine");
  }
  if (!dispatch_.status.ok()) {
    return FailedPreconditionError("the last Dispatch failed: {}",
                                   EarlierReason(dispatch_.status.message()));
  }
  return OkStatus();
}

}  // namespace epd
