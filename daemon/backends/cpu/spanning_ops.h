// Dispatch and combine of one rank of a group that spans daemons (cpu backend), over
// GlooRankLink. Each op is two exchanges among all group ranks: counts first (fixed-size
// headers), then payload (sizes the headers fixed).
//
// Dispatch: each source packs one message per destination (the tokens with a selection on
// it: token index, its top-k ids with other ranks' masked to -1, weights, row and scales);
// each destination rebuilds every source's routing restricted to itself and assembles its
// layout with the reference (reference_ops.h), so the result is bit-identical to a
// single-daemon run with the same R. Another layout plugs in by replacing the pack and the
// assemble step. The high-throughput layout needs neither replaced: its rows are exactly the
// tokens each message carries, so the header's per-destination token counts are its row
// counts (recv_capacity is checked on them) and the reference assembles the packed rows.
// Combine: each destination returns to each source the expert-output rows of that source's
// selections, in (token, k) order (high-throughput: one row per token and destination, at its
// first k there); the source reduces them with the reference.
#pragma once

#include <chrono>
#include <cstdint>
#include <vector>

#include "common/status.h"
#include "daemon/backends/cpu/gloo_rank_link.h"
#include "daemon/backends/cpu/reference_ops.h"
#include "daemon/core/group_config.h"

namespace epd::spanning {

// Kept by a rank's handle between its dispatch and the combine after it.
struct ReturnRows {
  // Per source group rank: the rows of this rank's expert output that source's selections
  // read, in (token, k) order.
  std::vector<std::vector<int32_t>> rows_for_source;
};

// `mine`: this rank's routing and tokens (x_scales set when x is pre-quantized fp8);
// `abandon`: non-OK when this rank gives the op up (the peers fail with it);
// `my_slots`: [T, K] out, the row of each of this rank's selections on its destination.
Status Dispatch(GlooRankLink& link, const GroupConfig& config, int me,
                const reference::SourceRank& mine, const Status& abandon,
                const reference::ReceiveBuffers& out, int32_t* my_slots, ReturnRows* rows,
                std::chrono::milliseconds timeout);

Status Combine(GlooRankLink& link, const GroupConfig& config, int me,
               const reference::SourceRank& mine, const Status& abandon, const int32_t* my_slots,
               const ReturnRows& rows, const void* expert_out, void* out,
               std::chrono::milliseconds timeout);

}  // namespace epd::spanning
