#include "daemon/core/control_worker.h"

namespace epd {

void ControlWorker::Post(std::function<void()> task) {
  if (!OnWorkerThread() && thread_.TryPost(std::move(task))) return;
  task();
}

void ControlWorker::Release(Released objects) {
  if (objects.empty()) return;
  Post([objects = std::move(objects)]() mutable { objects.clear(); });
}

}  // namespace epd
