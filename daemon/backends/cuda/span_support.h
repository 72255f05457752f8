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
// Bytes one rank sends per op to the other R - 1 ranks, dispatch and combine: exactly
// (low-latency), or at most (high-throughput, which sends only the rows routed).
int64_t SpanDispatchBytesSent(const GroupConfig& config);
int64_t SpanCombineBytesSent(const GroupConfig& config);

// High-throughput: the rows of one dispatch's messages of group rank `shape.rank`, from the
// headers its first exchange delivered: `headers` holds R headers of
// kernels::SpanHeaderWords(E, R) words, header p that of p's message to this rank (its own
// message for p == rank, whose rank words are this rank's rows to every rank). A message of a
// source that abandoned the op carries no rows; counts outside [0, T] (a corrupt header) are
// clamped, so both sides of every pair size their transfer alike from the same header.
struct SpanRows {
  std::vector<int64_t> in;   // [p]: rows p sends here (p == rank: this rank's own)
  std::vector<int64_t> out;  // [p]: rows this rank sends to p
};
SpanRows SpanRowsOf(const kernels::SpanShape& shape, const int32_t* headers);

}  // namespace epd::cuda
