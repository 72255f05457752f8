#include "daemon/core/rank_worker.h"

namespace epd {

RankWorker::RankWorker(int rank)
    : thread_(std::make_unique<TaskThread>("epd-rank" + std::to_string(rank))) {}

RankWorker::~RankWorker() {
  thread_.reset();  // runs what is queued: tasks of held lanes join their backlog
  for (auto& [lane, backlog] : held_) {
    for (Task& task : backlog) task(false);
  }
}

bool RankWorker::Post(Lane lane, Task task) {
  return thread_->TryPost(
      [this, lane, task = std::move(task)]() mutable { RunOrPark(lane, task); });
}

void RankWorker::Hold(Lane lane) { held_.try_emplace(lane); }

bool RankWorker::Resume(Lane lane, std::function<void()> first) {
  return thread_->TryPost([this, lane, first = std::move(first)] { RunResumed(lane, first); });
}

void RankWorker::RunOrPark(const Lane& lane, Task& task) {
  if (auto held = held_.find(lane); held != held_.end()) {
    held->second.push_back(std::move(task));
    return;
  }
  task(true);
}

// NOTE: tasks posted after the resume are queued behind it, so running the backlog here,
// parking what follows a task that holds the lane again, keeps the lane's order.
void RankWorker::RunResumed(const Lane& lane, const std::function<void()>& first) {
  std::deque<Task> backlog;
  if (auto held = held_.find(lane); held != held_.end()) {
    backlog = std::move(held->second);
    held_.erase(held);
  }
  first();
  while (!backlog.empty()) {
    Task task = std::move(backlog.front());
    backlog.pop_front();
    RunOrPark(lane, task);
  }
}

}  // namespace epd
