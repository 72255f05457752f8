// The data-plane semantics of docs/design.md §3, written for clarity on host memory.
//
// The cpu backend runs these on its worker threads; the GPU tests call them directly as the
// oracle the CUDA kernels must match bit for bit. Every function works on one rank and reads
// the other ranks' memory through plain pointers (all ranks live in one process).
//
// Ordering contract (deterministic, no atomics):
//  - expert-major: on rank d, expert l's rows are packed at recv_offsets[l], ordered by
//    (source rank, source token, k) ascending.
//  - rank-major: on rank d, row s * T + t holds token t of rank s when any of its top-k
//    experts lives on d; other rows are zero with expert ids -1.
//  - combine: out[t] = sum over k ascending of w * Z[slot[t][k]] in fp32, computed as
//    acc = acc + w * z with two roundings (never a fused multiply-add), stored in the token
//    dtype with round-to-nearest-even. Rank-major counts each destination rank once, at the
//    first k that selects it, with weight 1 (the frontend pre-reduced that row).
//  - high-throughput: on rank d, rows packed source-rank-major (for s ascending, for t
//    ascending, one row when any of t's experts lives on d), recv_topk_idx holding local ids;
//    per local expert the rows selecting it ascending in expert_rows; combine as rank-major
//    (weight 1, first k per destination rank) with the packed row as slot.
//  - fp8 dispatch (every layout, high-throughput included): a received row is QuantizeRowE4m3
//    of the source's bf16 token (common/fp8.h), or, when the source passed pre-quantized x and
//    x_scales, a byte copy of both; recv_scales row i scales recv_x row i; absent rank-major
//    rows have zero bytes in recv_x and recv_scales.
#pragma once

#include <cstdint>
#include <vector>

#include "daemon/core/group_config.h"
#include "common/status.h"

namespace epd::reference {

// One rank's routing after UpdateHandle, plus its tokens for the current dispatch.
struct SourceRank {
  int num_tokens = 0;
  const void* x = nullptr;                 // [n, H] token dtype, or e4m3 (dispatch only)
  const int32_t* topk_idx = nullptr;       // [n, K]
  const float* topk_weights = nullptr;     // [n, K]
  const int32_t* expert_counts = nullptr;  // [E]
  const void* x_scales = nullptr;          // [n, H / 128] when x is pre-quantized e4m3
};

// Pointers into one rank's exported handle region (see HandleLayout).
struct ReceiveBuffers {
  void* recv_x = nullptr;
  int32_t* recv_src = nullptr;
  float* recv_weights = nullptr;
  int32_t* recv_topk_idx = nullptr;
  float* recv_topk_weights = nullptr;
  int32_t* recv_counts = nullptr;
  int32_t* recv_offsets = nullptr;
  void* recv_scales = nullptr;  // fp8 dispatch
  int32_t* recv_rank_counts = nullptr;   // high-throughput
  int32_t* recv_rank_offsets = nullptr;  // high-throughput
  int32_t* expert_rows = nullptr;        // high-throughput
};
ReceiveBuffers ReceiveBuffersAt(void* exported_base, const HandleLayout& layout);

// Validates topk ids ([-1, E)) and normalises the routing of n tokens into the handle:
// int32 ids, f32 weights (1.0 when `weights` is null), per-expert selection counts.
Status BindRouting(const GroupConfig& config, const void* topk_idx, DType idx_dtype,
                   const float* weights, int num_tokens, int32_t* topk_out, float* weights_out,
                   int32_t* expert_counts_out);

// RESOURCE_EXHAUSTED naming the expert when the selections of all ranks exceed its capacity;
// high-throughput: naming the first rank whose packed rows exceed recv_capacity.
Status CheckCapacity(const GroupConfig& config, const std::vector<SourceRank>& ranks);
// High-throughput: the same check on rows per destination rank already counted (spanning
// groups count them from the exchanged headers, without the peers' routing).
Status CheckRowCapacity(const GroupConfig& config, const std::vector<int64_t>& rows_per_dest);

// Writes token t of `src` as received row `row`: the token's bytes, or with fp8 dispatch its
// e4m3 row and scales (QuantizeRowE4m3 here, or a byte copy when the source pre-quantized
// them). Every layout writes its rows with it.
void WriteRow(const GroupConfig& config, const SourceRank& src, int t, const ReceiveBuffers& out,
              size_t row);

// Fills rank d's receive buffers from every source rank.
void DispatchReceive(const GroupConfig& config, int dest_rank, const std::vector<SourceRank>& ranks,
                     const ReceiveBuffers& out);

// Row inside the destination rank's recv_x of each selection (t, k) of source rank s, or -1
// when the selection contributes nothing to combine (id -1, or rank-major repeat of a rank).
void ComputeSlots(const GroupConfig& config, int source_rank, const std::vector<SourceRank>& ranks,
                  int32_t* slot_out);

// Combine on rank r: expert_out[d] is rank d's expert output [recv_rows, H].
void Combine(const GroupConfig& config, const SourceRank& me, const int32_t* slot,
             const std::vector<const void*>& expert_out, void* out);

// High-throughput helpers (reference_high_throughput.cc), also used by the GPU tests.
// Rows source `src` sends to rank d: its tokens with at least one expert on d.
int64_t RowsTo(const GroupConfig& config, const SourceRank& src, int dest_rank);
// Total rows every rank would receive, per destination rank.
std::vector<int64_t> RowsPerDestination(const GroupConfig& config,
                                        const std::vector<SourceRank>& ranks);
void DispatchReceiveHighThroughput(const GroupConfig& config, int dest_rank,
                                   const std::vector<SourceRank>& ranks, const ReceiveBuffers& out);
void ComputeSlotsHighThroughput(const GroupConfig& config, int source_rank,
                                const std::vector<SourceRank>& ranks, int32_t* slot_out);
// The same slots from `me`'s routing alone: first_row[d] is the packed row on rank d of
// `me`'s first token that goes there (the rows earlier source ranks send to d).
void ComputeSlotsHighThroughputFrom(const GroupConfig& config, const SourceRank& me,
                                    std::vector<int64_t> first_row, int32_t* slot_out);

}  // namespace epd::reference
