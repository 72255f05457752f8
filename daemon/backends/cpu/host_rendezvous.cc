#include "daemon/backends/cpu/host_rendezvous.h"

#include <fmt/ranges.h>

#include <algorithm>

namespace epd {

HostRendezvous::HostRendezvous(std::string group_name, int world_size)
    : group_name_(std::move(group_name)), world_size_(world_size), issued_(world_size, 0) {}

uint64_t HostRendezvous::TakeSequence(int rank) {
  std::lock_guard lock(mutex_);
  return ++issued_[rank];
}

std::shared_ptr<HostRendezvous::Slot> HostRendezvous::SlotLocked(uint64_t seq) {
  auto& slot = slots_[seq];
  if (slot == nullptr) {
    slot = std::make_shared<Slot>();
    slot->parts.assign(world_size_, nullptr);
    slot->arrived.assign(world_size_, false);
    slot->left_ranks.assign(world_size_, false);
  }
  return slot;
}

// A slot goes once no rank needs it: a met op once every rank left (its readers), any other
// op once every rank arrived (it failed) or it was aborted. Waiters hold their own reference.
void HostRendezvous::EraseFinishedLocked() {
  for (auto it = slots_.begin(); it != slots_.end();) {
    const Slot& slot = *it->second;
    const bool finished = slot.met ? slot.left == world_size_
                                   : slot.arrivals == world_size_ || it->first <= aborted_through_;
    it = finished ? slots_.erase(it) : std::next(it);
  }
}

Status HostRendezvous::StoppedLocked(uint64_t seq) const {
  if (shut_down_) {
    return UnavailableError("group '{}' op {}: epd is shutting down", group_name_, seq);
  }
  if (seq > aborted_through_) return OkStatus();
  // The oldest abort that covers seq is the one that failed it.
  for (auto it = aborts_.rbegin(); it != aborts_.rend(); ++it) {
    if (it->first >= seq) return it->second;
  }
  return UnavailableError("group '{}' op {} was aborted", group_name_, seq);
}

std::string HostRendezvous::MissingLocked(const Slot& slot) const {
  std::vector<int> missing;
  for (int r = 0; r < world_size_; ++r) {
    if (!slot.arrived[r]) missing.push_back(r);
  }
  return fmt::format("group ranks [{}] did not post it", fmt::join(missing, ", "));
}

StatusOr<std::vector<const void*>> HostRendezvous::Arrive(int rank, uint64_t seq,
                                                          CollectiveKind kind, const void* part,
                                                          std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  EPD_RETURN_IF_ERROR(StoppedLocked(seq));
  std::shared_ptr<Slot> slot = SlotLocked(seq);
  if (slot->arrivals > 0 && slot->failure.ok() && slot->kind != kind) {
    slot->failure = FailedPreconditionError(
        "group '{}' op {}: ranks posted different ops ({} and {}); every rank must issue the same "
        "sequence of dispatch and combine",
        group_name_, seq, CollectiveKindName(slot->kind), CollectiveKindName(kind));
  }
  slot->kind = kind;
  slot->parts[rank] = part;
  slot->arrived[rank] = true;
  ++slot->arrivals;
  slot->met = slot->arrivals == world_size_ && slot->failure.ok() && StoppedLocked(seq).ok();
  changed_.notify_all();
  const bool released = changed_.wait_for(
      lock, timeout, [&] { return slot->met || !slot->failure.ok() || !StoppedLocked(seq).ok(); });
  // A met op is read by every rank, whatever came after (see the note in the header).
  if (slot->met) return slot->parts;
  Status failure = StoppedLocked(seq);
  if (failure.ok() && !released) {
    slot->failure = DeadlineExceededError(
        "group '{}' {} op {}: group rank {} timed out after {} ms: {}", group_name_,
        CollectiveKindName(kind), seq, rank, timeout.count(), MissingLocked(*slot));
    changed_.notify_all();
  }
  if (failure.ok()) failure = slot->failure;
  EraseFinishedLocked();
  return failure;
}

Status HostRendezvous::Leave(int rank, uint64_t seq, std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  auto it = slots_.find(seq);
  if (it == slots_.end() || !it->second->met) {
    return InternalError("group '{}' op {}: group rank {} leaves an op it did not meet",
                         group_name_, seq, rank);
  }
  std::shared_ptr<Slot> slot = it->second;
  slot->left_ranks[rank] = true;
  ++slot->left;
  changed_.notify_all();
  const auto all_left = [&] { return slot->left == world_size_; };
  if (!changed_.wait_for(lock, timeout, all_left)) {
    std::vector<int> reading;
    for (int r = 0; r < world_size_; ++r) {
      if (!slot->left_ranks[r]) reading.push_back(r);
    }
    if (slot->failure.ok()) {
      slot->failure = DeadlineExceededError(
          "group '{}' {} op {}: group rank {} timed out after {} ms waiting for group ranks [{}] "
          "to finish reading its memory",
          group_name_, CollectiveKindName(slot->kind), seq, rank, timeout.count(),
          fmt::join(reading, ", "));
    }
    // NOTE: they still read this rank's memory, and reading never waits: this ends.
    changed_.wait(lock, all_left);
  }
  // NOTE: only the op's own failure: an abort or a shutdown that came after every rank arrived
  // fails nothing here. The op's work is done, from memory its ops' references kept valid, as
  // a GPU op whose peers' flags all arrived ends well; failing it would fail the survivor of a
  // peer that ended its session right after its own part of the op was answered.
  const Status status = slot->failure;
  EraseFinishedLocked();
  return status;
}

void HostRendezvous::Abandon(int rank, uint64_t seq, CollectiveKind kind, const Status& reason) {
  std::lock_guard lock(mutex_);
  if (!StoppedLocked(seq).ok()) return;
  std::shared_ptr<Slot> slot = SlotLocked(seq);
  if (slot->failure.ok()) {
    slot->failure =
        Status(reason.code(), fmt::format("group '{}' {} op {}: group rank {}: {}", group_name_,
                                          CollectiveKindName(kind), seq, rank, reason.message()));
  }
  slot->arrived[rank] = true;
  ++slot->arrivals;
  changed_.notify_all();
  EraseFinishedLocked();
}

void HostRendezvous::Abort(const Status& reason) {
  std::lock_guard lock(mutex_);
  const uint64_t newest = *std::max_element(issued_.begin(), issued_.end());
  std::fill(issued_.begin(), issued_.end(), newest);
  if (newest > aborted_through_) {
    aborted_through_ = newest;
    aborts_.emplace_front(newest, reason);
    if (aborts_.size() > 16) aborts_.pop_back();
  }
  EraseFinishedLocked();
  changed_.notify_all();
}

void HostRendezvous::Shutdown() {
  std::lock_guard lock(mutex_);
  shut_down_ = true;
  changed_.notify_all();
}

}  // namespace epd
