// ControlWorker: the engine's one thread for control-plane work that may block — building
// groups and handles (device allocations, communicator setup), opening frontend memory, and
// dropping the last reference to anything that frees device memory or closes an IPC mapping.
// RPC threads post here and complete their call from the task, so they never wait.
//
// Tasks run one at a time in posting order, so two creations of one group name are
// serialised without a lock held across the build, and a release posted before a reply
// finished before the reply is sent.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "daemon/core/task_thread.h"

namespace epd {

// Objects whose last reference may free device memory.
using Released = std::vector<std::shared_ptr<const void>>;

class ControlWorker {
 public:
  ControlWorker() : thread_("epd-control") {}
  // Destruction runs what is queued, then joins.
  ControlWorker(const ControlWorker&) = delete;
  ControlWorker& operator=(const ControlWorker&) = delete;

  // Queues `task`. Runs it on the caller instead when the caller is the worker itself (a
  // control task that needs another one must not wait for it) or once the worker is
  // stopping, so a completion callback is never lost.
  void Post(std::function<void()> task);
  // Drops `objects` on the worker (after everything posted before).
  void Release(Released objects);
  // True on the worker thread: a caller there must not wait for a posted task.
  bool OnWorkerThread() const { return thread_.OnThread(); }
  size_t queued() const { return thread_.queued(); }

 private:
  TaskThread thread_;
};

}  // namespace epd
