// OpLane: the cuda backend's execution lane of one (group, node rank): the CUDA stream its ops
// run on, the ring of device error records they report into, the ops enqueued since the last
// Complete(), and the completion thread that waits for the lane's events. One per group rank
// that holds a handle, made with the first handle and retired with the group
// (daemon/core/lane_registry.h), so a group's waits (a never-signalled fence, a late peer)
// hold back neither another group's stream nor its completions.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "daemon/backends/cuda/completion_thread.h"
#include "daemon/backends/cuda/cuda_stream.h"
#include "daemon/backends/cuda/error_records.h"
#include "daemon/backends/cuda/reclaimer.h"

namespace epd::cuda {

class OpLane {
 public:
  // `name` ("group 'g' rank r") is for liveness messages; `on_sticky_error` as
  // CompletionThread's.
  // The lane's error-record ring comes from `reclaimer`'s pinned blocks and goes back there
  // (freeing it would wait for the GPU), counted in `rings`: rings are infrastructure like
  // streams, outside the backend's AllocationCounter, so the data-plane memory tests do not
  // depend on when a lane goes (lane_registry.h). Both must outlive the lane.
  static StatusOr<std::unique_ptr<OpLane>> Create(
      int device, std::string name, AllocationCounter& rings, Reclaimer& reclaimer,
      std::function<void(const Status&)> on_sticky_error);
  ~OpLane();  // completes what is queued, then gives the ring back

  cudaStream_t stream() const { return stream_->get(); }
  int device() const { return stream_->device(); }
  const std::string& name() const { return name_; }

  // Claims a device error record for an op about to be enqueued on this lane.
  kernels::DeviceError* ClaimRecord(PendingOp op);
  // Calls `done` (on the completion thread) once everything enqueued so far finished, with
  // the first error the ops since the previous Complete() recorded.
  void Complete(std::function<void(Status)> done);

  BusyClock::Clock::duration busy_for() const { return completion_->busy_for(); }
  bool OnThread() const { return completion_->OnThread(); }

 private:
  OpLane(std::string name, Reclaimer& reclaimer) : name_(std::move(name)), reclaimer_(reclaimer) {}

  const std::string name_;
  Reclaimer& reclaimer_;
  std::unique_ptr<CudaStream> stream_;
  std::unique_ptr<ErrorRecords> records_;  // NOTE: after completion_ goes: it reads them
  bool registered_ = false;                // with reclaimer_, until the destructor
  std::mutex mu_;
  std::vector<PendingOp> pending_;  // guarded by mu_
  // NOTE: last: it drains its queue (reading the records) before the rest goes.
  std::unique_ptr<CompletionThread> completion_;
};

}  // namespace epd::cuda
