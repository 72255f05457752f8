// A whole-process time limit for a bench whose CUDA calls can block without a timeout of their
// own: a launch into a full queue behind a closed gate, a lazy kernel load that synchronizes a
// context whose stream waits on a flag, a cudaFree that synchronizes such a context. None of
// those returns, so no Status can report them; the watchdog thread names the phase the
// process was in, on stderr, and ends the process with kWatchdogExitCode.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>

namespace epd::bench {

constexpr int kWatchdogExitCode = 3;

class Watchdog {
 public:
  // `program` prefixes the message; `limit` counts from construction.
  Watchdog(std::string program, std::chrono::milliseconds limit);
  ~Watchdog();  // disarms
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // Names what the process does now, and says so on stderr (a progress line).
  void Phase(const std::string& what);

 private:
  void Run();

  const std::string program_;
  const std::chrono::milliseconds limit_;
  const std::chrono::steady_clock::time_point start_;
  std::mutex mutex_;
  std::condition_variable disarmed_cv_;
  bool disarmed_ = false;
  std::string phase_ = "starting";
  std::thread thread_;
};

}  // namespace epd::bench
