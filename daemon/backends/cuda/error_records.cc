#include "daemon/backends/cuda/error_records.h"

#include <atomic>
#include <cstring>
#include <optional>

namespace epd::cuda {

std::string PendingOp::Describe() const {
  if (group == nullptr) return fmt::format("{} on node rank {}", op, rank);
  return kernels::DescribeGroupOp(op, *group, rank, value);
}

StatusOr<std::unique_ptr<ErrorRecords>> ErrorRecords::Create(AllocationCounter& counter,
                                                             Reclaimer* reclaimer) {
  EPD_ASSIGN_OR_RETURN(
      auto memory,
      PinnedHostMemory::Create(sizeof(kernels::DeviceError) * kRecords, counter, reclaimer));
  return std::unique_ptr<ErrorRecords>(new ErrorRecords(std::move(memory)));
}

kernels::DeviceError* ErrorRecords::Claim(int* index) {
  std::lock_guard<std::mutex> lock(mu_);
  *index = next_;
  next_ = (next_ + 1) % kRecords;
  kernels::DeviceError* record = records() + *index;
  std::memset(record, 0, sizeof(*record));
  std::atomic_thread_fence(std::memory_order_release);  // cleared before the launch is issued
  return record;
}

Status ErrorRecords::Collect(const std::vector<PendingOp>& ops) const {
  std::atomic_thread_fence(std::memory_order_acquire);
  for (const PendingOp& op : ops) {
    const kernels::DeviceError record = records()[op.record];
    if (record.code != kernels::kDeviceErrorNone) {
      return DeviceErrorToStatus(record, op.Describe(), op.aborts.get());
    }
  }
  return OkStatus();
}

Status DeviceErrorToStatus(const kernels::DeviceError& e, const std::string& what,
                           const GroupAborts* aborts) {
  // The group knows why a peer gave up or why the group was aborted; without it (or without a
  // recorded reason) the generic translation, shared with frontend-launched ops, applies.
  if (aborts != nullptr && e.code == kernels::kDeviceErrorPeerAbandoned) {
    if (std::optional<Status> why = aborts->AbandonReason(e.b, e.value); why.has_value()) {
      return Status(why->code(), fmt::format("{}: group rank {}: {}", what, e.b, why->message()));
    }
  }
  if (aborts != nullptr && e.code == kernels::kDeviceErrorAborted) {
    const Status why = aborts->AbortReason(static_cast<uint64_t>(e.value));
    return Status(why.code(), fmt::format("{}: {}", what, why.message()));
  }
  return kernels::DeviceErrorToStatus(e, what);
}

}  // namespace epd::cuda
