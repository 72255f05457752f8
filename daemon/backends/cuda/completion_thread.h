// CompletionThread: one per execution lane (op_lane.h). Waits (off the op path) for the event recorded at each
// Complete(), turns the ops' device error records into a Status and calls `done`. CUDA is
// never called from a host callback (cudaLaunchHostFunc forbids it); this thread may.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "daemon/backends/cuda/cuda_event.h"
#include "daemon/core/busy_clock.h"
#include "daemon/backends/cuda/error_records.h"

namespace epd::cuda {

class CompletionThread {
 public:
  using Done = std::function<void(Status)>;
  // on_sticky_error: called once with the error when the device context is lost.
  CompletionThread(int device, ErrorRecords& records,
                   std::function<void(const Status&)> on_sticky_error);
  ~CompletionThread();  // completes everything queued, then joins

  // Records an event on `stream` after the work enqueued so far and queues `done` behind it.
  // On a failure to record, calls done with the error right away.
  void Enqueue(cudaStream_t stream, std::vector<PendingOp> ops, Done done);
  // How long the item handled now has been waited for (zero when idle): the liveness probe.
  BusyClock::Clock::duration busy_for() const { return busy_.BusyFor(); }
  bool OnThread() const { return std::this_thread::get_id() == thread_.get_id(); }

 private:
  struct Item {
    std::unique_ptr<CudaEvent> event;
    std::vector<PendingOp> ops;
    Done done;
  };
  void Run();
  StatusOr<std::unique_ptr<CudaEvent>> TakeEvent();

  const int device_;
  ErrorRecords& records_;
  std::function<void(const Status&)> on_sticky_error_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  std::vector<std::unique_ptr<CudaEvent>> free_events_;
  bool stopping_ = false;
  bool sticky_reported_ = false;
  BusyClock busy_;
  std::thread thread_;
};

}  // namespace epd::cuda
