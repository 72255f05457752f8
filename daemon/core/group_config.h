// GroupConfig: the immutable EP configuration shared by every rank of a group, and the pure
// size functions of the buffers a handle needs (testable without any device).
//
// Notation (docs/design.md §2): R ranks, E experts, L = E / R local experts (expert e lives on
// rank e / L), H hidden elements per token, T max tokens per rank, K top-k,
// C rows of capacity per expert (default R * T); high-throughput: M total receive rows
// (recv_capacity, default R * T) and G = M * min(K, L) entries of the expert gather list.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/align.h"
#include "common/dtype.h"
#include "common/fp8.h"
#include "common/status.h"

namespace epd {

// AUTO's rule: from this many tokens per rank the high-throughput algorithm (packed rows,
// per-rank dedup, bounded SMs) is chosen; below it the low-latency one. epd-bench's sweep
// (--algorithm low-latency and high-throughput over 128..8192 tokens) measures the crossover.
inline constexpr int kAutoHighThroughputMinTokens = 1024;

struct GroupConfig {
  std::string name;
  std::vector<int> ranks;  // node-local ranks (GPU indices) of group ranks 0..R-1
  int experts = 0;
  int hidden = 0;
  int max_tokens_per_rank = 0;
  int top_k = 0;
  DType dtype = DType::kBf16;
  Algorithm algorithm = Algorithm::kLowLatency;
  Layout layout = Layout::kExpertMajor;
  int expert_capacity = 0;  // rows per expert; 0 means R * T (low-latency expert-major only)
  // High-throughput: total receive rows per rank; 0 means R * T, which no routing can exceed.
  int recv_capacity = 0;
  // High-throughput: SMs (blocks) the dispatch and combine copies may use; 0 means
  // kDefaultHtSmBudget (common/limits.h).
  int sm_budget = 0;
  // What dispatch moves. kFp8E4m3 (bf16 groups, H % 128 == 0): recv_x holds e4m3 rows and
  // recv_scales one scale per 128 channels (common/fp8.h); combine stays in `dtype`.
  DispatchFormat dispatch_format = DispatchFormat::kTokenDType;
  ScaleFormat scale_format = ScaleFormat::kFp32;  // fp8 dispatch only
  // Multi-node (docs/design.md §9): a spanning group's `ranks` are global ranks,
  // node * ranks_per_node + node rank, over every daemon of the cluster; each daemon creates
  // the group for the ranks it hosts. `span` is this daemon's place, filled in by the daemon
  // (config file or engine) from its [cluster] settings, never by a client.
  struct Span {
    int node = 0;
    int nodes = 1;
    int ranks_per_node = 0;
  };
  bool spans_nodes = false;
  Span span;

  int world_size() const { return static_cast<int>(ranks.size()); }
  int local_experts() const { return world_size() > 0 ? experts / world_size() : 0; }
  int capacity() const {
    return expert_capacity > 0 ? expert_capacity : world_size() * max_tokens_per_rank;
  }
  int rank_of_expert(int expert) const { return expert / local_experts(); }
  bool high_throughput() const { return algorithm == Algorithm::kHighThroughput; }
  int recv_row_capacity() const {
    return recv_capacity > 0 ? recv_capacity : world_size() * max_tokens_per_rank;
  }
  int effective_sm_budget() const;
  // Entries of the high-throughput expert gather list: a row selects at most min(K, L)
  // distinct local experts.
  int64_t expert_rows_capacity() const;
  bool fp8_dispatch() const { return dispatch_format == DispatchFormat::kFp8E4m3; }
  // dtype of recv_x (and of a pre-quantized dispatch x): e4m3 or the token dtype.
  DType recv_dtype() const { return fp8_dispatch() ? DType::kFp8E4m3 : dtype; }
  // Bytes of one received row and of its scales (0 without fp8 dispatch).
  size_t recv_row_bytes() const { return static_cast<size_t>(hidden) * DTypeSize(recv_dtype()); }
  int scale_blocks() const { return fp8_dispatch() ? hidden / kFp8BlockChannels : 0; }
  DType scale_dtype() const {
    return scale_format == ScaleFormat::kFp32 ? DType::kFp32 : DType::kUint8;
  }
  size_t scale_row_bytes() const {
    return static_cast<size_t>(scale_blocks()) * ScaleBytes(scale_format);
  }
  // Turns Algorithm::kAuto into a concrete algorithm: high_throughput when
  // max_tokens_per_rank >= kAutoHighThroughputMinTokens, else low_latency. Groups that span
  // nodes (between daemons high_throughput trades a host round trip per dispatch for sending
  // only the rows routed; where that pays depends on the network, not measured) and fp8 groups
  // (high_throughput quantizes bf16 x on its few SMs: ~4x slower than its bf16 copy on an H200,
  // while it moves pre-quantized x fastest of all) ask for high_throughput by name. Other
  // values stay.
  void ResolveAlgorithm();
  // Group rank of a node rank, or -1 when the node rank is not a member.
  int GroupRankOf(int node_rank) const;
  // The node rank (on this daemon) of a group rank, or -1 when another daemon hosts it.
  int NodeRankOf(int group_rank) const;
  // The group ranks this daemon hosts, ascending (every one for a group of this daemon only).
  std::vector<int> HostedGroupRanks() const;
  // The node that hosts a group rank (0 for groups that do not span nodes).
  int NodeOf(int group_rank) const;

  // Checks every field against the others and against the node's rank count; the message
  // names the field and its value.
  Status Validate(int node_ranks) const;
  bool SameShape(const GroupConfig& other) const;
  std::string ToString() const;
};

// Byte sizes and element shapes of one rank's handle buffers, from the group constants only.
// Buffers the frontend sees (received tokens and their metadata) form one exported region,
// laid out back to back at 256-byte aligned offsets; the rest is daemon-private.
struct HandleLayout {
  // --- exported region ---
  // Expert-major: recv_x [L * C, H] packed, expert l rows at [offsets[l], offsets[l] + counts[l]);
  //               recv_src [L * C, 3] int32 (src rank, src token, k); recv_weights [L * C] f32;
  //               recv_counts [L] int32; recv_offsets [L] int32.
  // Rank-major:   recv_x [R * T, H], row s * T + t holds token t of rank s (zero when absent);
  //               recv_topk_idx [R * T, K] int32 (expert id when it lives here, else -1);
  //               recv_topk_weights [R * T, K] f32 (0 where idx is -1); recv_counts [R] int32
  //               (n_s).
  // High-throughput (packed, M = recv_capacity rows, G = M * min(K, L)):
  //               rows packed source-rank-major: for s = 0..R-1, for t ascending over rank s's
  //               n_s tokens, one row when any of t's top-k experts lives here (a token crosses
  //               to a rank once); rows past the total are stale.
  //               recv_x [M, H]; recv_src [M, 2] int32 (src rank, src token);
  //               recv_topk_idx [M, K] int32 (LOCAL expert id, or -1 where the expert lives
  //               elsewhere; k positions kept); recv_topk_weights [M, K] f32 (0 where -1);
  //               recv_rank_counts [R] / recv_rank_offsets [R] int32 (rows from source s and
  //               the first of them); recv_counts [L] int32 (rows selecting local expert l)
  //               and recv_offsets [L + 1] int32 (exclusive prefix, into expert_rows);
  //               expert_rows [G] int32: for each l, the rows selecting l, ascending (a row
  //               that selects l twice is listed once).
  // Fp8 dispatch (every layout): recv_x is e4m3 [recv_rows, H] and recv_scales
  //               [recv_rows, H / 128] fp32 or ue8m0 bytes, row i scaling recv_x row i
  //               (absent rank-major rows: zero bytes in both; high-throughput: in the packed
  //               row order, rows past the total stale).
  size_t recv_rows = 0;
  size_t recv_x_offset = 0, recv_x_bytes = 0;
  size_t recv_src_offset = 0, recv_src_bytes = 0;                    // expert-major only
  size_t recv_weights_offset = 0, recv_weights_bytes = 0;            // expert-major only
  size_t recv_topk_idx_offset = 0, recv_topk_idx_bytes = 0;          // rank-major only
  size_t recv_topk_weights_offset = 0, recv_topk_weights_bytes = 0;  // rank-major only
  size_t recv_counts_offset = 0, recv_counts_bytes = 0;
  size_t recv_offsets_offset = 0, recv_offsets_bytes = 0;  // expert-major, high-throughput
  size_t recv_rank_counts_offset = 0, recv_rank_counts_bytes = 0;    // high-throughput only
  size_t recv_rank_offsets_offset = 0, recv_rank_offsets_bytes = 0;  // high-throughput only
  size_t expert_rows_offset = 0, expert_rows_bytes = 0;              // high-throughput only
  size_t expert_rows_entries = 0;                                    // G
  size_t recv_scales_offset = 0, recv_scales_bytes = 0;    // fp8 dispatch only
  size_t exported_bytes = 0;

  // --- private region (source-side routing bound by UpdateHandle) ---
  size_t topk_idx_bytes = 0;       // [T, K] int32 copy of the bound routing
  size_t topk_weights_bytes = 0;   // [T, K] f32 (1.0 when the frontend gave none)
  size_t expert_counts_bytes = 0;  // [E] int32 selections per expert from this rank
  size_t slot_bytes = 0;           // [T, K] int32 row inside the destination rank's recv_x
  // High-throughput: [T, R] int32, token t's row among this rank's rows sent to rank d (-1:
  // none), and [R] int32 rows sent to each rank; both bound by UpdateHandle.
  size_t dest_row_bytes = 0;
  size_t dest_counts_bytes = 0;

  size_t total_bytes() const {
    return exported_bytes + topk_idx_bytes + topk_weights_bytes + expert_counts_bytes +
           slot_bytes + dest_row_bytes + dest_counts_bytes;
  }
};

HandleLayout ComputeHandleLayout(const GroupConfig& config);

}  // namespace epd
