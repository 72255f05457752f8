#include "tests/bench/watchdog.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>

namespace epd::bench {

Watchdog::Watchdog(std::string program, std::chrono::milliseconds limit)
    : program_(std::move(program)),
      limit_(limit),
      start_(std::chrono::steady_clock::now()),
      thread_([this] { Run(); }) {}

Watchdog::~Watchdog() {
  {
    std::lock_guard lock(mutex_);
    disarmed_ = true;
  }
  disarmed_cv_.notify_all();
  thread_.join();
}

void Watchdog::Phase(const std::string& what) {
  const double elapsed_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  {
    std::lock_guard lock(mutex_);
    phase_ = what;
  }
  std::fprintf(stderr, "%s: [%6.2f s] %s\n", program_.c_str(), elapsed_s, what.c_str());
}

void Watchdog::Run() {
  std::unique_lock lock(mutex_);
  if (disarmed_cv_.wait_until(lock, start_ + limit_, [this] { return disarmed_; })) return;
  const std::string message = fmt::format(
      "{}: no result within {} s; stuck in: {}. A CUDA call that never returns (the GPU or a "
      "peer process is not progressing); giving up with exit code {}\n",
      program_, limit_.count() / 1000, phase_, kWatchdogExitCode);
  std::fputs(message.c_str(), stderr);
  std::fflush(stderr);
  // NOTE: _exit, not exit: exit-time teardown of the CUDA runtime would wait on the very
  // stream that is stuck. A child started with PR_SET_PDEATHSIG goes with us.
  _exit(kWatchdogExitCode);
}

}  // namespace epd::bench
