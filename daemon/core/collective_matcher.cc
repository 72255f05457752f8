#include "daemon/core/collective_matcher.h"

#include <fmt/ranges.h>

#include <algorithm>

namespace epd {

std::string_view CollectiveKindName(CollectiveKind kind) {
  return kind == CollectiveKind::kDispatch ? "dispatch" : "combine";
}

CollectiveMatcher::CollectiveMatcher(std::string group_name, int world_size)
    : group_name_(std::move(group_name)), world_size_(world_size), next_sequence_(world_size, 0) {}

uint64_t CollectiveMatcher::next_sequence(int group_rank) const {
  std::lock_guard lock(mutex_);
  return next_sequence_[group_rank];
}

std::shared_ptr<CollectiveMatcher::Slot> CollectiveMatcher::SlotFor(uint64_t sequence) {
  auto& slot = slots_[sequence];
  if (slot == nullptr) {
    slot = std::make_shared<Slot>();
    slot->payloads.resize(world_size_);
  }
  return slot;
}

// A slot is finished once every rank moved past it; waiters hold their own reference.
void CollectiveMatcher::EraseFinishedSlots() {
  const uint64_t oldest = *std::min_element(next_sequence_.begin(), next_sequence_.end());
  slots_.erase(slots_.begin(), slots_.lower_bound(oldest));
}

StatusOr<MatchedCollective> CollectiveMatcher::Arrive(
    int group_rank, std::shared_ptr<const CollectivePayload> payload, Deadline deadline) {
  std::unique_lock lock(mutex_);
  const uint64_t sequence = next_sequence_[group_rank]++;
  std::shared_ptr<Slot> slot = SlotFor(sequence);
  EraseFinishedSlots();
  if (!slot->failure.ok()) return slot->failure;

  const CollectiveKind kind = payload->kind;
  for (const auto& other : slot->payloads) {
    if (other != nullptr && other->kind != kind) {
      slot->failure = FailedPreconditionError(
          "group '{}' collective #{}: ranks posted different ops ({} and {}); every rank must "
          "issue the same sequence of dispatch and combine",
          group_name_, sequence, CollectiveKindName(other->kind), CollectiveKindName(kind));
      changed_.notify_all();
      return slot->failure;
    }
  }
  slot->payloads[group_rank] = std::move(payload);
  if (++slot->arrived == world_size_) {
    slot->complete = true;
    changed_.notify_all();
    return slot->payloads;
  }
  const bool done =
      changed_.wait_until(lock, deadline, [&] { return slot->complete || !slot->failure.ok(); });
  if (slot->complete) return slot->payloads;
  if (!slot->failure.ok()) return slot->failure;
  if (!done) {
    std::vector<int> missing;
    for (int r = 0; r < world_size_; ++r) {
      if (slot->payloads[r] == nullptr) missing.push_back(r);
    }
    slot->failure = DeadlineExceededError(
        "group '{}' {} #{}: group rank {} timed out waiting for group ranks [{}] to post it",
        group_name_, CollectiveKindName(kind), sequence, group_rank, fmt::join(missing, ", "));
    changed_.notify_all();
  }
  return slot->failure;
}

void CollectiveMatcher::Abort(const Status& status) {
  std::lock_guard lock(mutex_);
  for (auto& [sequence, slot] : slots_) {
    if (!slot->complete && slot->failure.ok()) slot->failure = status;
  }
  const uint64_t newest = *std::max_element(next_sequence_.begin(), next_sequence_.end());
  std::fill(next_sequence_.begin(), next_sequence_.end(), newest);
  EraseFinishedSlots();
  changed_.notify_all();
}

}  // namespace epd
