// One thread per node rank that runs that rank's ops in submission order (docs/design.md §7).
// Ops of one rank never overtake each other; ranks run concurrently.
#pragma once

#include <functional>
#include <string>

#include "daemon/core/task_thread.h"

namespace epd {

class RankWorker {
 public:
  explicit RankWorker(int rank) : thread_("epd-rank" + std::to_string(rank)) {}
  // Destruction runs what is queued, then joins.
  RankWorker(const RankWorker&) = delete;
  RankWorker& operator=(const RankWorker&) = delete;

  // False once stopping: the task is not queued.
  bool Post(std::function<void()> task) { return thread_.TryPost(std::move(task)); }
  size_t queued() const { return thread_.queued(); }
  // How long the task running now has been running (zero when idle): the liveness probe.
  BusyClock::Clock::duration busy_for() const { return thread_.busy_for(); }

 private:
  TaskThread thread_;
};

}  // namespace epd
