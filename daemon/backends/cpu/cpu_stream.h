// CpuStream: the cpu backend's stand-in for a GPU stream, one per (group, node rank) that
// holds a handle: the lane of docs/design.md's threading model. Its thread runs the lane's ops
// in the order they were enqueued; an op's error is kept, like a device error record, until
// the next Complete() reports the first one. Ops may wait for peers here (the waits are
// bounded and abortable), never on the engine's worker that enqueued them; a wait blocks only
// its own group's ops on that rank.
#pragma once

#include <functional>
#include <string>

#include "common/status.h"
#include "daemon/core/task_thread.h"

namespace epd {

class CpuStream {
 public:
  // `group` and `node_rank` name the thread (tools cut it to 15 characters).
  CpuStream(const std::string& group, int node_rank)
      : name_("group '" + group + "' rank " + std::to_string(node_rank)),
        thread_("epd-r" + std::to_string(node_rank) + "-" + group) {}
  ~CpuStream() = default;  // runs what is queued, then joins

  // Queues `op`; a non-OK result is reported by the next Complete().
  void Enqueue(std::function<Status()> op) {
    std::function<void()> task = [this, op = std::move(op)] {
      Status status = op();
      if (first_error_.ok() && !status.ok()) first_error_ = std::move(status);
    };
    // NOTE: refused only while the lane is destroyed, when no handle can enqueue on it.
    (void)thread_.TryPost(std::move(task));
  }

  // Calls `done` on the stream thread once everything enqueued before has run, with the first
  // error since the previous Complete(); never drops `done`.
  void Complete(std::function<void(Status)> done) {
    std::function<void()> task = [this, done] {
      Status status = std::move(first_error_);
      first_error_ = OkStatus();
      done(std::move(status));
    };
    if (!thread_.TryPost(std::move(task))) done(UnavailableError("epd is shutting down"));
  }

  // How long the op running now has run (zero when idle): the watchdog's liveness probe.
  BusyClock::Clock::duration busy_for() const { return thread_.busy_for(); }
  bool OnThread() const { return thread_.OnThread(); }
  const std::string& name() const { return name_; }

 private:
  const std::string name_;
  Status first_error_;  // stream thread only
  TaskThread thread_;   // NOTE: last: joined before the members its tasks use go
};

}  // namespace epd
