// What the cuda backend supports of a group that spans daemons, and the sizes of its NCCL
// messages (kernels/span_messages.h) from a GroupConfig. Pure functions: unit-tested without a
// GPU.
#pragma once

#include <cstdint>

#include "common/status.h"
#include "daemon/core/group_config.h"
#include "kernels/span_messages.h"

namespace epd::cuda {

// OK for a spanning group (either algorithm, token-dtype or fp8 dispatch); INVALID_ARGUMENT
// naming the group beyond kernels::kMaxSpanningRanks ranks.
Status CheckSpanningSupported(const GroupConfig& config);

kernels::SpanDispatchMessage SpanDispatchMessageOf(const GroupConfig& config);
// The kernels' view of the group from group rank `group_rank`.
kernels::SpanShape SpanShapeOf(const GroupConfig& config, int group_rank);
kernels::SpanReturnMessage SpanReturnMessageOf(const GroupConfig& config);
// Device bytes of one rank's exchange buffers (send/receive of both directions and the plan).
int64_t SpanHandleBytesOf(const GroupConfig& config);
// Bytes one rank sends per op to the other R - 1 ranks: dispatch and combine.
int64_t SpanDispatchBytesSent(const GroupConfig& config);
int64_t SpanCombineBytesSent(const GroupConfig& config);

}  // namespace epd::cuda
