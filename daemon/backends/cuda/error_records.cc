#include "daemon/backends/cuda/error_records.h"

#include <atomic>
#include <cstring>

namespace epd::cuda {

std::string PendingOp::Describe() const {
  if (group == nullptr) return fmt::format("{} on node rank {}", op, rank);
  return fmt::format("{} of group '{}' on rank {} (op {})", op, *group, rank, value);
}

StatusOr<std::unique_ptr<ErrorRecords>> ErrorRecords::Create(AllocationCounter& counter) {
  EPD_ASSIGN_OR_RETURN(auto memory,
                       PinnedHostMemory::Create(sizeof(kernels::DeviceError) * kRecords, counter));
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
    if (record.code != kernels::kDeviceErrorNone) return kernels::DeviceErrorToStatus(record, op.Describe());
  }
  return OkStatus();
}

}  // namespace epd::cuda
