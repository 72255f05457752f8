#include "kernels/device_error_status.h"

#include <bit>

#include "common/routing_errors.h"

namespace epd::kernels {
namespace {

const char* PhaseName(int phase) {
  switch (phase) {
    case kSyncPhaseCounts:
      return "per-expert counts (dispatch)";
    case kSyncPhaseDone:
      return "rows-written flag (dispatch)";
    case kSyncPhaseStart:
      return "expert-output-ready flag (combine)";
    case kSyncPhaseEnd:
      return "finished-reading flag (combine)";
    default:
      return "leader block";
  }
}

}  // namespace

std::string DescribeGroupOp(std::string_view op, std::string_view group, int group_rank,
                            uint64_t seq) {
  return fmt::format("{} of group '{}' on rank {} (op {})", op, group, group_rank, seq);
}

Status DeviceErrorToStatus(const DeviceError& e, const std::string& what) {
  switch (e.code) {
    case kDeviceErrorNone:
      return OkStatus();
    case kDeviceErrorBadExpertId:
      return BadExpertIdError(e.a, e.b, e.value, e.c).WithContext(what);
    case kDeviceErrorBadWeight:
      return NonFiniteWeightError(e.a, e.b, std::bit_cast<float>(static_cast<uint32_t>(e.value)))
          .WithContext(what);
    case kDeviceErrorCapacity:
      return ResourceExhaustedError("{}: expert {} received {} rows, more than expert_capacity={}",
                                    what, e.a, e.b, e.c);
    case kDeviceErrorRowCapacity:
      return ResourceExhaustedError(
          "{}: group rank {} would receive {} rows, more than recv_capacity={}", what, e.a, e.b,
          e.c);
    case kDeviceErrorPeerTimeout:
      return DeadlineExceededError(
          "{}: timed out waiting for group rank {}'s {} of op {} (last seen {})", what, e.b,
          PhaseName(e.a), e.value, e.value2);
    case kDeviceErrorFenceTimeout:
      return DeadlineExceededError("{}: timed out waiting for the fence to reach {} (it holds {})",
                                   what, e.value, e.value2);
    case kDeviceErrorPeerAbandoned:
      if (e.c > 0) {
        return DeadlineExceededError(
            "{}: group rank {} gave up op {} after timing out waiting for group rank {}", what, e.b,
            e.value, e.c - 1);
      }
      return UnavailableError("{}: group rank {} gave up op {} (aborted)", what, e.b, e.value);
    case kDeviceErrorAborted:
      return UnavailableError("{}: cancelled: epd is shutting down", what);
    default:
      return InternalError("{}: unknown device error code {}", what, e.code);
  }
}

}  // namespace epd::kernels
