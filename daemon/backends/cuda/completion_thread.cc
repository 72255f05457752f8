#include "daemon/backends/cuda/completion_thread.h"

#include "daemon/core/log.h"

namespace epd::cuda {

CompletionThread::CompletionThread(int device, ErrorRecords& records,
                                   std::function<void(const Status&)> on_sticky_error)
    : device_(device),
      records_(records),
      on_sticky_error_(std::move(on_sticky_error)),
      thread_([this] { Run(); }) {}

CompletionThread::~CompletionThread() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

StatusOr<std::unique_ptr<CudaEvent>> CompletionThread::TakeEvent() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!free_events_.empty()) {
      auto event = std::move(free_events_.back());
      free_events_.pop_back();
      return event;
    }
  }
  return CudaEvent::Create(device_);
}

void CompletionThread::Enqueue(cudaStream_t stream, std::vector<PendingOp> ops, Done done) {
  auto event = TakeEvent();
  if (!event.ok()) {
    done(event.status());
    return;
  }
  cudaSetDevice(device_);
  if (cudaError_t e = cudaEventRecord((*event)->get(), stream); e != cudaSuccess) {
    done(CudaStatus(e, "cudaEventRecord", __FILE__, __LINE__));
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(Item{std::move(event).value(), std::move(ops), std::move(done)});
  }
  cv_.notify_one();
}

void CompletionThread::Run() {
  cudaSetDevice(device_);
  for (;;) {
    Item item;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping and drained
      item = std::move(queue_.front());
      queue_.pop_front();
    }
    busy_.Begin();
    Status status;
    if (cudaError_t e = cudaEventSynchronize(item.event->get()); e != cudaSuccess) {
      // A sticky error (illegal address, ...) poisons the context: nothing on this GPU works
      // any more. Say so loudly once; the daemon reports NOT_SERVING and lets systemd restart.
      status = CudaStatus(e, "cudaEventSynchronize", __FILE__, __LINE__);
      bool first = false;
      {
        std::lock_guard<std::mutex> lock(mu_);
        first = !sticky_reported_;
        sticky_reported_ = true;
      }
      if (first) {
        EPD_LOG(kCuda, critical, "GPU {}: device error, context unusable: {}", device_,
                status.message());
        if (on_sticky_error_) on_sticky_error_(status);
      }
    } else {
      status = records_.Collect(item.ops);
    }
    item.done(status);
    busy_.End();
    std::lock_guard<std::mutex> lock(mu_);
    free_events_.push_back(std::move(item.event));
  }
}

}  // namespace epd::cuda
