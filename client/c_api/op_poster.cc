#include "client/c_api/internal.h"

namespace epd::c_api {

std::future<Status> PostOp(Session& session, v1::SessionRequest request) {
  switch (request.op_case()) {
    case v1::SessionRequest::kUpdate:
      return session.UpdateAsync(std::move(*request.mutable_update()));
    case v1::SessionRequest::kDispatch:
      return session.DispatchAsync(std::move(*request.mutable_dispatch()));
    default:
      return session.CombineAsync(std::move(*request.mutable_combine()));
  }
}

OpPoster::OpPoster(Session& session, OpReaper& reaper) : session_(session), reaper_(reaper) {
  thread_ = std::thread([this] { Run(); });
}

OpPoster::~OpPoster() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  changed_.notify_all();
  thread_.join();
}

void OpPoster::Enqueue(v1::SessionRequest request, const char* what, uint64_t signal_fence_id,
                       uint64_t signal_value) {
  {
    std::lock_guard lock(mu_);
    queue_.push_back(Queued{std::move(request), what, signal_fence_id, signal_value});
  }
  changed_.notify_one();
}

Status OpPoster::Flush(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  if (!changed_.wait_for(lock, timeout, [this] { return queue_.empty() && !busy_; })) {
    return DeadlineExceededError("{} op(s) not handed to the session's stream within {} ms",
                                 queue_.size() + (busy_ ? 1 : 0), timeout.count());
  }
  return OkStatus();
}

void OpPoster::Run() {
  std::unique_lock lock(mu_);
  while (true) {
    changed_.wait(lock, [this] { return stop_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stop_, and everything queued was posted
    Queued op = std::move(queue_.front());
    queue_.pop_front();
    busy_ = true;
    lock.unlock();
    reaper_.Add(PostOp(session_, std::move(op.request)), op.what, op.signal_fence_id,
                op.signal_value);
    lock.lock();
    busy_ = false;
    if (queue_.empty()) changed_.notify_all();  // Flush
  }
}

}  // namespace epd::c_api
