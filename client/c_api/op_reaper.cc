#include "client/c_api/internal.h"

namespace epd::c_api {

OpReaper::OpReaper(std::chrono::milliseconds op_timeout,
                   std::function<void(uint64_t, uint64_t)> release_fence)
    : op_timeout_(op_timeout), release_fence_(std::move(release_fence)) {
  thread_ = std::thread([this] { Run(); });
}

OpReaper::~OpReaper() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  changed_.notify_all();
  thread_.join();
}

void OpReaper::Add(std::future<Status> answer, std::string what, uint64_t signal_fence_id,
                   uint64_t signal_value) {
  {
    std::lock_guard lock(mu_);
    pending_.push_back(Pending{std::move(answer), std::move(what), signal_fence_id, signal_value});
  }
  changed_.notify_all();
}

Status OpReaper::TakeError() {
  std::lock_guard lock(mu_);
  Status error = std::move(first_error_);
  first_error_ = OkStatus();
  return error;
}

Status OpReaper::Drain(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  if (!changed_.wait_for(lock, timeout, [this] { return pending_.empty() && !busy_; })) {
    return DeadlineExceededError("{} posted op(s) still unanswered after {} ms",
                                 pending_.size() + (busy_ ? 1 : 0), timeout.count());
  }
  return OkStatus();
}

void OpReaper::Run() {
  std::unique_lock lock(mu_);
  while (true) {
    changed_.wait(lock, [this] { return stop_ || !pending_.empty(); });
    // NOTE: on stop, entries left are answered already (the session's stream ended first);
    // they are still reaped so their errors and fence releases are not lost.
    if (pending_.empty()) return;
    Pending op = std::move(pending_.front());
    pending_.pop_front();
    busy_ = true;
    lock.unlock();
    Status status = op.answer.wait_for(op_timeout_) == std::future_status::ready
                        ? op.answer.get()
                        : DeadlineExceededError("no answer within {} ms", op_timeout_.count());
    if (!status.ok() && op.signal_fence_id != 0) release_fence_(op.signal_fence_id, op.signal_value);
    lock.lock();
    busy_ = false;
    if (!status.ok() && first_error_.ok()) {
      first_error_ = Status(status.code(), fmt::format("fenced {}: {}", op.what, status.message()));
    }
    changed_.notify_all();
  }
}

}  // namespace epd::c_api
