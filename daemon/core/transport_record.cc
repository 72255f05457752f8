#include "daemon/core/transport_record.h"

#include <algorithm>

namespace epd {

TransportRecord::TransportRecord(const std::vector<int>& hosted_group_ranks) {
  for (int g : hosted_group_ranks) {
    RankTransportState rank;
    rank.group_rank = g;
    ranks_.push_back(std::move(rank));
  }
  std::sort(ranks_.begin(), ranks_.end(),
            [](const auto& a, const auto& b) { return a.group_rank < b.group_rank; });
}

namespace {

void MarkFormed(RankTransportState& rank, int64_t generation) {
  if (rank.formed && rank.generation == generation) return;
  rank.formed = true;
  rank.generation = generation;
  ++rank.formations;
}

void MarkFailed(RankTransportState& rank, const Status& reason,
                std::chrono::system_clock::time_point now) {
  rank.formed = false;
  ++rank.failures;
  rank.last_failure = reason.message();
  rank.last_failure_at = now;
}

}  // namespace

RankTransportState* TransportRecord::Find(int group_rank) {
  for (RankTransportState& rank : ranks_) {
    if (rank.group_rank == group_rank) return &rank;
  }
  return nullptr;
}

void TransportRecord::Formed(int group_rank, int64_t generation) {
  std::lock_guard lock(mutex_);
  if (RankTransportState* rank = Find(group_rank)) MarkFormed(*rank, generation);
}

void TransportRecord::Failed(int group_rank, const Status& reason) {
  const auto now = std::chrono::system_clock::now();
  std::lock_guard lock(mutex_);
  if (RankTransportState* rank = Find(group_rank)) MarkFailed(*rank, reason, now);
}

void TransportRecord::FormedAll(int64_t generation) {
  std::lock_guard lock(mutex_);
  for (RankTransportState& rank : ranks_) MarkFormed(rank, generation);
}

void TransportRecord::FailedAll(const Status& reason) {
  const auto now = std::chrono::system_clock::now();
  std::lock_guard lock(mutex_);
  for (RankTransportState& rank : ranks_) MarkFailed(rank, reason, now);
}

std::vector<RankTransportState> TransportRecord::State() const {
  std::lock_guard lock(mutex_);
  return ranks_;
}

}  // namespace epd
