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

// The error-record rings of one node rank's lanes, kept for reuse: cudaFreeHost waits for
// the whole device to go idle, so a lane's teardown must not free its ring while another
// group's op waits on that GPU (a ring is cleared record by record when claimed anyway).
// Rings are infrastructure like streams, outside the backend's AllocationCounter: the
// data-plane memory tests count must not depend on when a lane goes (lane_registry.h).
class RecordPool {
 public:
  StatusOr<std::unique_ptr<ErrorRecords>> Take();
  void Give(std::unique_ptr<ErrorRecords> records);

 private:
  AllocationCounter counter_;  // NOTE: before spare_: outlives the rings
  std::mutex mu_;
  std::vector<std::unique_ptr<ErrorRecords>> spare_;
};

class OpLane {
 public:
  // `name` ("group 'g' rank r") is for liveness messages; `on_sticky_error` as
  // CompletionThread's.
  // `pool` (the rank's) and `reclaimer` (which frees memory after the lane's work) must
  // outlive the lane.
  static StatusOr<std::unique_ptr<OpLane>> Create(
      int device, std::string name, RecordPool& pool, Reclaimer& reclaimer,
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
  OpLane(std::string name, RecordPool& pool, Reclaimer& reclaimer)
      : name_(std::move(name)), pool_(pool), reclaimer_(reclaimer) {}

  const std::string name_;
  RecordPool& pool_;
  Reclaimer& reclaimer_;
  std::unique_ptr<CudaStream> stream_;
  std::unique_ptr<ErrorRecords> records_;
  bool registered_ = false;  // with reclaimer_, until the destructor
  std::mutex mu_;
  std::vector<PendingOp> pending_;  // guarded by mu_
  // NOTE: last: it drains its queue (reading the records) before the rest goes.
  std::unique_ptr<CompletionThread> completion_;
};

}  // namespace epd::cuda
