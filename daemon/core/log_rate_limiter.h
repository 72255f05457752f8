// LogRateLimiter: lets at most `burst` lines through per `period` and counts the rest, so a
// storm of failing ops (a frontend retrying a bad request in a loop) cannot flood the log,
// while the next line that passes says how many were suppressed.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>

namespace epd {

class LogRateLimiter {
 public:
  using Clock = std::chrono::steady_clock;

  LogRateLimiter(int burst, Clock::duration period) : burst_(burst), period_(period) {}

  // True when this line may be logged; then `*suppressed` is how many lines were held back
  // since the last one that passed.
  bool Allow(uint64_t* suppressed, Clock::time_point now = Clock::now()) {
    std::lock_guard lock(mutex_);
    if (now - window_start_ >= period_) {
      window_start_ = now;
      passed_in_window_ = 0;
    }
    if (passed_in_window_ >= burst_) {
      ++suppressed_;
      return false;
    }
    ++passed_in_window_;
    *suppressed = suppressed_;
    suppressed_ = 0;
    return true;
  }

 private:
  const int burst_;
  const Clock::duration period_;
  std::mutex mutex_;
  Clock::time_point window_start_{};
  int passed_in_window_ = 0;
  uint64_t suppressed_ = 0;
};

}  // namespace epd
