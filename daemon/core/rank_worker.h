// One thread per node rank that hands that rank's ops to the backend (docs/design.md §7).
// Ops of one lane (a group's rank: the backend stream its ops go to) never overtake each
// other; ranks run concurrently. A lane can be held while its last op waits for the device
// (an op's deferred part, Backend::HasDeferred): its later ops wait, in order, and the rank's
// other lanes' ops run meanwhile, so one group never waits behind another's device.
#pragma once

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>

#include "daemon/core/task_thread.h"

namespace epd {

class RankWorker {
 public:
  // A lane: its group (any pointer that names it) and group rank.
  using Lane = std::pair<const void*, int>;
  // Called once on the worker: with true to run it, or with false when the worker stopped
  // while the task's lane was held (the task then only answers and cleans up).
  using Task = std::function<void(bool run)>;

  explicit RankWorker(int rank);
  // Runs what is queued, then joins; tasks of lanes still held are then called with false.
  ~RankWorker();
  RankWorker(const RankWorker&) = delete;
  RankWorker& operator=(const RankWorker&) = delete;

  // Queues `task` for `lane`: it runs after everything posted before it, and after the
  // lane's held tasks. False once stopping: the task is dropped uncalled.
  bool Post(Lane lane, Task task);
  // On the worker's thread only: the lane's tasks wait from now on until Resume(lane).
  void Hold(Lane lane);
  // Queues `first`, then the lane's held tasks in order, until one of them holds the lane
  // again. False once stopping: the lane stays held (its tasks are called with false).
  bool Resume(Lane lane, std::function<void()> first);

  // How long the task running now has been running (zero when idle): the liveness probe.
  BusyClock::Clock::duration busy_for() const { return thread_->busy_for(); }

 private:
  void RunOrPark(const Lane& lane, Task& task);
  void RunResumed(const Lane& lane, const std::function<void()>& first);

  // The worker's thread only, and the destructor once it joined.
  std::map<Lane, std::deque<Task>> held_;
  std::unique_ptr<TaskThread> thread_;
};

}  // namespace epd
