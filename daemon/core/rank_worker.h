// One thread per node rank that runs that rank's ops in submission order (docs/design.md §7).
// Ops of one rank never overtake each other; ranks run concurrently.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include "daemon/core/busy_clock.h"

namespace epd {

class RankWorker {
 public:
  explicit RankWorker(int rank);
  ~RankWorker();  // runs what is queued, then joins
  RankWorker(const RankWorker&) = delete;
  RankWorker& operator=(const RankWorker&) = delete;

  // False once stopping: the task is not queued.
  bool Post(std::function<void()> task);
  size_t queued() const;
  // How long the task running now has been running (zero when idle): the liveness probe.
  BusyClock::Clock::duration busy_for() const { return busy_.BusyFor(); }

 private:
  void Run();

  const int rank_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> tasks_;
  bool stopping_ = false;
  BusyClock busy_;
  std::thread thread_;
};

}  // namespace epd
