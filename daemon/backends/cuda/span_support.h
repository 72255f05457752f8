// What the cuda backend supports of a group that spans daemons, and the sizes of its NCCL
// messages (kernels/span_messages.h) from a GroupConfig. Pure functions: unit-tested without a
// GPU.
#pragma once

#include <cstdint>
#include <vector>

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
// Bytes one rank sends per op to the other R - 1 ranks, dispatch and combine: exactly, or at
// most where only the rows routed are sent (high-throughput; expert-major low-latency combine).
int64_t SpanDispatchBytesSent(const GroupConfig& config);
int64_t SpanCombineBytesSent(const GroupConfig& config);

// Whether the host reads a dispatch's headers: high-throughput groups size their payload and
// return exchanges by them, expert-major low-latency groups their return exchange.
bool SpanReadsHeaders(const GroupConfig& config);

// The rows of each pair's messages in one dispatch of group rank `shape.rank` (high-throughput:
// the packed rows; expert-major low-latency: the selections, which the combine's return
// messages carry back), from the headers its exchange delivered: `headers` holds R headers of
// kernels::SpanHeaderWords(E, R) words, header p that of p's message to this rank (its own
// message for p == rank, whose words describe this rank's own routing). A message of a
// source that abandoned the op carries no rows; counts outside [0, T x J] (a corrupt header)
// are clamped, so both sides of every pair size their transfer alike from the same header.
struct SpanRows {
  std::vector<int64_t> in;   // [p]: rows p sends here (p == rank: this rank's own)
  std::vector<int64_t> out;  // [p]: rows this rank sends to p
};
SpanRows SpanRowsOf(const kernels::SpanShape& shape, const int32_t* headers);

}  // namespace epd::cuda
