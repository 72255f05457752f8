// The Status an op fails with when its kernel wrote a DeviceError record: one translation for
// the daemon's streams and for frontend-launched ops, so both report the same messages.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/status.h"
#include "kernels/device_error.cuh"

namespace epd::kernels {

// `what` names the op; an abandoned or aborted op gets the generic reason (the daemon adds
// its group's recorded reason where it has one).
// `what` names the op ("dispatch of group 'g' on rank 1 (op 7)").
Status DeviceErrorToStatus(const DeviceError& error, const std::string& what);

// The `what` of a group's op, worded alike by both data paths: "dispatch of group 'g' on rank
// 1 (op 7)".
std::string DescribeGroupOp(std::string_view op, std::string_view group, int group_rank,
                            uint64_t seq);

}  // namespace epd::kernels
