// ControlWorker: the engine's one thread for control-plane work that may block — building
// groups and handles (device allocations, communicator setup), opening frontend memory, and
// dropping the last reference to anything that frees device memory or closes an IPC mapping.
// RPC threads post here and complete their call from the task, so they never wait.
//
// Tasks run one at a time in posting order, so two creations of one group name are
// serialised without a lock held across the build, and a release posted before a reply
// finished before the reply is sent.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace epd {

// Objects whose last reference may free device memory.
using Released = std::vector<std::shared_ptr<const void>>;

class ControlWorker {
 public:
  ControlWorker();
  ~ControlWorker();  // runs what is queued, then joins
  ControlWorker(const ControlWorker&) = delete;
  ControlWorker& operator=(const ControlWorker&) = delete;

  // Queues `task`. Runs it on the caller instead when the caller is the worker itself (a
  // control task that needs another one must not wait for it) or once the worker is
  // stopping, so a completion callback is never lost.
  void Post(std::function<void()> task);
  // Drops `objects` on the worker (after everything posted before).
  void Release(Released objects);
  // True on the worker thread: a caller there must not wait for a posted task.
  bool OnWorkerThread() const { return std::this_thread::get_id() == thread_.get_id(); }
  size_t queued() const;

 private:
  void Run();

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> tasks_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace epd
