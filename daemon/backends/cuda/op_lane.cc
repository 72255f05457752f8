#include "daemon/backends/cuda/op_lane.h"

namespace epd::cuda {

StatusOr<std::unique_ptr<OpLane>> OpLane::Create(
    int device, std::string name, AllocationCounter& rings, Reclaimer& reclaimer,
    std::function<void(const Status&)> on_sticky_error) {
  std::unique_ptr<OpLane> lane(new OpLane(std::move(name), reclaimer));
  EPD_ASSIGN_OR_RETURN(lane->stream_, CudaStream::Create(device));
  EPD_ASSIGN_OR_RETURN(lane->records_, ErrorRecords::Create(rings, &reclaimer));
  EPD_RETURN_IF_ERROR(reclaimer.AddStream(device, lane->stream()));
  lane->registered_ = true;
  lane->completion_ =
      std::make_unique<CompletionThread>(device, *lane->records_, std::move(on_sticky_error));
  return lane;
}

OpLane::~OpLane() {
  completion_.reset();  // reads the records until its queue is drained
  if (registered_) reclaimer_.RemoveStream(stream());
}

kernels::DeviceError* OpLane::ClaimRecord(PendingOp op) {
  kernels::DeviceError* record = records_->Claim(&op.record);
  std::lock_guard lock(mu_);
  pending_.push_back(std::move(op));
  return record;
}

void OpLane::Complete(std::function<void(Status)> done) {
  std::vector<PendingOp> ops;
  {
    std::lock_guard lock(mu_);
    ops.swap(pending_);
  }
  completion_->Enqueue(stream_->get(), std::move(ops), std::move(done));
}

}  // namespace epd::cuda
