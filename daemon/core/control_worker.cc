#include "daemon/core/control_worker.h"

#include <pthread.h>

namespace epd {

ControlWorker::ControlWorker() : thread_([this] { Run(); }) {
  pthread_setname_np(thread_.native_handle(), "epd-control");
}

ControlWorker::~ControlWorker() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void ControlWorker::Post(std::function<void()> task) {
  if (!OnWorkerThread()) {
    std::lock_guard lock(mutex_);
    if (!stopping_) {
      tasks_.push_back(std::move(task));
      wake_.notify_one();
      return;
    }
  }
  task();
}

void ControlWorker::Release(Released objects) {
  if (objects.empty()) return;
  Post([objects = std::move(objects)]() mutable { objects.clear(); });
}

size_t ControlWorker::queued() const {
  std::lock_guard lock(mutex_);
  return tasks_.size();
}

void ControlWorker::Run() {
  for (;;) {
    std::function<void()> task;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [this] { return stopping_ || !tasks_.empty(); });
      if (tasks_.empty()) return;  // stopping and drained
      task = std::move(tasks_.front());
      tasks_.pop_front();
    }
    task();
  }
}

}  // namespace epd
