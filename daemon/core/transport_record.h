// TransportRecord: what the transport of a group that spans daemons (NCCL communicators on the
// cuda backend, gloo meshes on the cpu backend) went through on this daemon, per group rank it
// hosts: formed now or not, the generation, how many formations and failures, the last
// failure's reason and time. ListGroups / GetNodeInfo and /metrics show it, so an on-call
// engineer sees which spanning group is down and why without reading logs.
//
// Thread-safe; the transports call it from their formation, exchange and watchdog threads.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "common/status.h"

namespace epd {

struct RankTransportState {
  int group_rank = 0;
  bool formed = false;       // its communicator / mesh is formed now
  int64_t generation = -1;   // the one formed now, else the last formed; -1: never formed
  uint64_t formations = 0;   // communicators / meshes formed since the group was created here
  uint64_t failures = 0;     // formations and exchanges that failed
  std::string last_failure;  // the last failure's reason; empty: none
  std::chrono::system_clock::time_point last_failure_at{};  // epoch: none
};

class TransportRecord {
 public:
  explicit TransportRecord(const std::vector<int>& hosted_group_ranks);

  // `group_rank` formed `generation`; again for the generation it has formed is no new formation.
  void Formed(int group_rank, int64_t generation);
  // A formation or an exchange of `group_rank` failed with `reason`: it is no longer formed.
  void Failed(int group_rank, const Status& reason);
  // Both, for every hosted rank (a transport that forms and fails all of them at once).
  void FormedAll(int64_t generation);
  void FailedAll(const Status& reason);

  std::vector<RankTransportState> State() const;  // in group-rank order

 private:
  RankTransportState* Find(int group_rank);  // under mutex_; null for a rank not hosted here

  mutable std::mutex mutex_;
  std::vector<RankTransportState> ranks_;
};

}  // namespace epd
