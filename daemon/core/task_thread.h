// TaskThread: one named thread that runs posted tasks one at a time in posting order, and on
// destruction runs what is still queued before joining. The rank workers and the control
// worker are both built on it; they differ only in what a post after stopping does.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "daemon/core/busy_clock.h"

namespace epd {

class TaskThread {
 public:
  // `name` is the thread's name as tools show it (cut to the 15 characters Linux keeps).
  explicit TaskThread(const std::string& name);
  ~TaskThread();  // runs what is queued, then joins
  TaskThread(const TaskThread&) = delete;
  TaskThread& operator=(const TaskThread&) = delete;

  // Queues `task`, moving from it; false once stopping, and then `task` is left untouched so
  // the caller can still run it (a copy would keep its captures alive on the caller's thread).
  bool TryPost(std::function<void()>&& task);
  bool OnThread() const { return std::this_thread::get_id() == thread_.get_id(); }
  size_t queued() const;
  // How long the task running now has been running (zero when idle): a liveness probe.
  BusyClock::Clock::duration busy_for() const { return busy_.BusyFor(); }

 private:
  void Run();

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> tasks_;
  bool stopping_ = false;
  BusyClock busy_;
  std::thread thread_;
};

}  // namespace epd
