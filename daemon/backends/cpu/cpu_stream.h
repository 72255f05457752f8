// CpuStream: the cpu backend's stand-in for a GPU stream. One thread per node rank runs the
// rank's ops in the order they were enqueued; an op's error is kept, like a device error
// record, until the next Complete() reports the first one. Ops may wait for peers here (the
// waits are bounded and abortable), never on the engine's worker that enqueued them.
#pragma once

#include <functional>

#include "common/status.h"
#include "daemon/core/rank_worker.h"

namespace epd {

class CpuStream {
 public:
  explicit CpuStream(int node_rank) : thread_(node_rank) {}
  ~CpuStream() = default;  // runs what is queued, then joins

  // Queues `op`; a non-OK result is reported by the next Complete().
  void Enqueue(std::function<Status()> op) {
    thread_.Post([this, op = std::move(op)] {
      Status status = op();
      if (first_error_.ok() && !status.ok()) first_error_ = std::move(status);
    });
  }

  // Calls `done` on the stream thread once everything enqueued before has run, with the first
  // error since the previous Complete().
  // How long the op running now has run (zero when idle): the watchdog's liveness probe.
  BusyClock::Clock::duration busy_for() const { return thread_.busy_for(); }

  void Complete(std::function<void(Status)> done) {
    thread_.Post([this, done = std::move(done)] {
      Status status = std::move(first_error_);
      first_error_ = OkStatus();
      done(std::move(status));
    });
  }

 private:
  RankWorker thread_;
  Status first_error_;  // stream thread only
};

}  // namespace epd
