// BusyClock: when a service thread (rank worker, completion thread) started the task it is
// running, so a liveness probe can tell a thread that is stuck in one task from one that is
// idle or making progress, without waking or waiting for the thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace epd {

class BusyClock {
 public:
  using Clock = std::chrono::steady_clock;

  void Begin(Clock::time_point now = Clock::now()) {
    since_ns_.store(now.time_since_epoch().count(), std::memory_order_relaxed);
  }
  void End() { since_ns_.store(kIdle, std::memory_order_relaxed); }

  // How long the current task has been running at `now`; zero when idle.
  Clock::duration BusyFor(Clock::time_point now = Clock::now()) const {
    const int64_t since = since_ns_.load(std::memory_order_relaxed);
    if (since == kIdle) return Clock::duration::zero();
    return now - Clock::time_point(Clock::duration(since));
  }

 private:
  static constexpr int64_t kIdle = INT64_MIN;
  std::atomic<int64_t> since_ns_{kIdle};
};

}  // namespace epd
