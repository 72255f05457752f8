#include "daemon/backends/cuda/error_records.h"

#include <atomic>
#include <cstring>

namespace epd::cuda {
namespace {

const char* PhaseName(int phase) {
  switch (phase) {
    case kernels::kSyncPhaseCounts:
      return "per-expert counts (dispatch)";
    case kernels::kSyncPhaseDone:
      return "rows-written flag (dispatch)";
    case kernels::kSyncPhaseStart:
      return "expert-output-ready flag (combine)";
    case kernels::kSyncPhaseEnd:
      return "finished-reading flag (combine)";
    default:
      return "leader block";
  }
}

}  // namespace

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
    if (record.code != kernels::kDeviceErrorNone) {
      return DeviceErrorToStatus(record, op.Describe(), op.aborts.get());
    }
  }
  return OkStatus();
}

Status DeviceErrorToStatus(const kernels::DeviceError& e, const std::string& what,
                           const GroupAborts* aborts) {
  switch (e.code) {
    case kernels::kDeviceErrorNone:
      return OkStatus();
    case kernels::kDeviceErrorBadExpertId:
      return InvalidArgumentError("{}: topk_idx[{}, {}] = {} is outside [-1, experts)", what, e.a,
                                  e.b, e.value);
    case kernels::kDeviceErrorCapacity:
      return ResourceExhaustedError("{}: expert {} received {} rows, more than expert_capacity={}",
                                    what, e.a, e.b, e.c);
    case kernels::kDeviceErrorPeerTimeout:
      return DeadlineExceededError(
          "{}: timed out waiting for group rank {}'s {} of op {} (last seen {})", what, e.b,
          PhaseName(e.a), e.value, e.value2);
    case kernels::kDeviceErrorFenceTimeout:
      return DeadlineExceededError("{}: timed out waiting for the fence to reach {} (it holds {})",
                                   what, e.value, e.value2);
    case kernels::kDeviceErrorPeerAbandoned: {
      if (aborts != nullptr) {
        if (std::optional<Status> why = aborts->AbandonReason(e.b, e.value); why.has_value()) {
          return Status(why->code(),
                        fmt::format("{}: group rank {}: {}", what, e.b, why->message()));
        }
      }
      if (e.c > 0) {
        return DeadlineExceededError(
            "{}: group rank {} gave up op {} after timing out waiting for group rank {}", what, e.b,
            e.value, e.c - 1);
      }
      return UnavailableError("{}: group rank {} gave up op {} (aborted)", what, e.b, e.value);
    }
    case kernels::kDeviceErrorAborted: {
      if (aborts == nullptr) return UnavailableError("{}: cancelled: epd is shutting down", what);
      const Status why = aborts->AbortReason(static_cast<uint64_t>(e.value));
      return Status(why.code(), fmt::format("{}: {}", what, why.message()));
    }
    default:
      return InternalError("{}: unknown device error code {}", what, e.code);
  }
}

}  // namespace epd::cuda
