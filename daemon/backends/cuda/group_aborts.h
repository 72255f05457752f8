// GroupAborts: why a group's ops were aborted (the group's abort word was raised) or abandoned
// by a rank on the host, kept so that the ops that saw it on the device, which record only an
// op number, fail with the reason and the rank that caused it.
#pragma once

#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <tuple>

#include "common/status.h"

namespace epd::cuda {

class GroupAborts {
 public:
  // Ops numbered up to `through` were aborted because of `reason`.
  void NoteAbort(uint64_t through, Status reason) {
    std::lock_guard lock(mu_);
    aborts_.emplace_back(through, std::move(reason));
    if (aborts_.size() > kKept) aborts_.pop_front();
  }
  // Group rank `rank` gave up op `seq` on the host because of `reason`.
  void NoteAbandon(int rank, uint64_t seq, Status reason) {
    std::lock_guard lock(mu_);
    abandons_.emplace_back(rank, seq, std::move(reason));
    if (abandons_.size() > kKept) abandons_.pop_front();
  }
  // The first abort that covered op `seq`.
  Status AbortReason(uint64_t seq) const {
    std::lock_guard lock(mu_);
    for (const auto& [through, reason] : aborts_) {
      if (through >= seq) return reason;
    }
    return UnavailableError("op {} was aborted", seq);
  }
  std::optional<Status> AbandonReason(int rank, uint64_t seq) const {
    std::lock_guard lock(mu_);
    for (const auto& [r, s, reason] : abandons_) {
      if (r == rank && s == seq) return reason;
    }
    return std::nullopt;
  }

 private:
  static constexpr size_t kKept = 64;
  mutable std::mutex mu_;
  std::deque<std::pair<uint64_t, Status>> aborts_;
  std::deque<std::tuple<int, uint64_t, Status>> abandons_;
};

}  // namespace epd::cuda
