#include "daemon/core/group_config.h"

#include <algorithm>
#include <set>

#include <fmt/ranges.h>

#include "common/limits.h"

namespace epd {

int GroupConfig::effective_sm_budget() const {
  return sm_budget > 0 ? sm_budget : kDefaultHtSmBudget;
}

int64_t GroupConfig::expert_rows_capacity() const {
  return static_cast<int64_t>(recv_row_capacity()) * std::min(top_k, local_experts());
}

void GroupConfig::ResolveAlgorithm() {
  if (algorithm != Algorithm::kAuto) return;
  algorithm = max_tokens_per_rank >= kAutoHighThroughputMinTokens && !spans_nodes &&
                      !fp8_dispatch()
                  ? Algorithm::kHighThroughput
                  : Algorithm::kLowLatency;
}

int GroupConfig::GroupRankOf(int node_rank) const {
  const int wanted = spans_nodes ? span.node * span.ranks_per_node + node_rank : node_rank;
  if (spans_nodes && (node_rank < 0 || node_rank >= span.ranks_per_node)) return -1;
  auto it = std::find(ranks.begin(), ranks.end(), wanted);
  return it == ranks.end() ? -1 : static_cast<int>(it - ranks.begin());
}

int GroupConfig::NodeRankOf(int group_rank) const {
  if (group_rank < 0 || group_rank >= world_size()) return -1;
  if (!spans_nodes) return ranks[group_rank];
  return NodeOf(group_rank) == span.node ? ranks[group_rank] % span.ranks_per_node : -1;
}

std::vector<int> GroupConfig::HostedGroupRanks() const {
  std::vector<int> hosted;
  for (int g = 0; g < world_size(); ++g) {
    if (NodeRankOf(g) >= 0) hosted.push_back(g);
  }
  return hosted;
}

int GroupConfig::NodeOf(int group_rank) const {
  if (!spans_nodes || span.ranks_per_node <= 0) return 0;
  return ranks[group_rank] / span.ranks_per_node;
}

Status GroupConfig::Validate(int node_ranks) const {
  if (name.empty()) return InvalidArgumentError("group.name must not be empty");
  if (name.size() > 128) return InvalidArgumentError("group.name is longer than 128 characters");
  if (ranks.empty()) return InvalidArgumentError("group '{}': ranks must not be empty", name);
  std::set<int> seen;
  if (spans_nodes && span.nodes < 2) {
    return FailedPreconditionError(
        "group '{}': spans_nodes needs a multi-node deployment ([cluster] nodes >= 2), but this "
        "daemon runs alone",
        name);
  }
  if (spans_nodes && span.ranks_per_node != node_ranks) {
    return InvalidArgumentError("group '{}': the cluster's ranks per node ({}) differ from this "
                                "node's ranks ({})",
                                name, span.ranks_per_node, node_ranks);
  }
  const int rank_bound = spans_nodes ? span.nodes * span.ranks_per_node : node_ranks;
  for (int r : ranks) {
    // NOTE: the ranks may come from world_size (0..world_size-1): both are named.
    if (spans_nodes && (r < 0 || r >= rank_bound)) {
      return InvalidArgumentError(
          "group '{}': global rank {} is outside the cluster's ranks [0, {}) ({} nodes x {}); "
          "ranks / world_size name {} ranks",
          name, r, rank_bound, span.nodes, span.ranks_per_node, world_size());
    }
    if (r < 0 || r >= rank_bound) {
      return InvalidArgumentError(
          "group '{}': rank {} is outside the node's ranks [0, {}); ranks / world_size name {} "
          "ranks",
          name, r, node_ranks, world_size());
    }
    if (!seen.insert(r).second) {
      return InvalidArgumentError("group '{}': rank {} is listed twice", name, r);
    }
  }
  const int world = world_size();
  if (experts <= 0 || experts > kMaxExperts) {
    return InvalidArgumentError("group '{}': experts={} must be in [1, {}]", name, experts,
                                kMaxExperts);
  }
  if (experts % world != 0) {
    return InvalidArgumentError("group '{}': experts={} is not a multiple of the world size {}",
                                name, experts, world);
  }
  if (hidden <= 0 || hidden > kMaxHidden || hidden % kHiddenMultiple != 0) {
    return InvalidArgumentError("group '{}': hidden={} must be a positive multiple of {} up to {}",
                                name, hidden, kHiddenMultiple, kMaxHidden);
  }
  if (max_tokens_per_rank <= 0 || max_tokens_per_rank > kMaxTokensPerRank) {
    return InvalidArgumentError("group '{}': max_tokens_per_rank={} must be in [1, {}]", name,
                                max_tokens_per_rank, kMaxTokensPerRank);
  }
  if (top_k <= 0 || top_k > kMaxTopK || top_k > experts) {
    return InvalidArgumentError("group '{}': top_k={} must be in [1, min({}, experts={})]", name,
                                top_k, kMaxTopK, experts);
  }
  if (!IsTokenDType(dtype)) {
    return InvalidArgumentError("group '{}': dtype={} is not a token dtype (bf16, fp16, fp32)",
                                name, DTypeName(dtype));
  }
  if (fp8_dispatch()) {
    if (dtype != DType::kBf16) {
      return InvalidArgumentError(
          "group '{}': dispatch_dtype=fp8_e4m3 quantizes bf16 tokens, but dtype={}", name,
          DTypeName(dtype));
    }
    if (hidden % kFp8BlockChannels != 0) {
      return InvalidArgumentError(
          "group '{}': dispatch_dtype=fp8_e4m3 needs hidden={} to be a multiple of {}", name,
          hidden, kFp8BlockChannels);
    }
  }
  if (expert_capacity < 0) {
    return InvalidArgumentError("group '{}': expert_capacity={} must be >= 0 (0 = R * T)", name,
                                expert_capacity);
  }
  if (algorithm == Algorithm::kAuto) {
    return InvalidArgumentError("group '{}': algorithm = auto was not resolved (ResolveAlgorithm)",
                                name);
  }
  if (recv_capacity < 0) {
    return InvalidArgumentError("group '{}': recv_capacity={} must be >= 0 (0 = R * T)", name,
                                recv_capacity);
  }
  if (sm_budget < 0 || sm_budget > kMaxHtSmBudget) {
    return InvalidArgumentError("group '{}': sm_budget={} must be in [0, {}] (0 = {})", name,
                                sm_budget, kMaxHtSmBudget, kDefaultHtSmBudget);
  }
  if (high_throughput()) {
    // The packed layout has its own capacity and combine rule; the low-latency options would
    // be silently meaningless, so they are refused by name.
    if (layout == Layout::kRankMajor) {
      return InvalidArgumentError(
          "group '{}': layout = rank_major does not apply to algorithm = high_throughput, whose "
          "receive rows are packed by source rank; leave layout unset",
          name);
    }
    if (expert_capacity != 0) {
      return InvalidArgumentError(
          "group '{}': expert_capacity={} does not apply to algorithm = high_throughput; bound "
          "its receive rows with recv_capacity",
          name, expert_capacity);
    }
    const int64_t most_rows = static_cast<int64_t>(world) * max_tokens_per_rank;
    if (recv_capacity > most_rows) {
      return InvalidArgumentError(
          "group '{}': recv_capacity={} exceeds world_size * max_tokens_per_rank = {}, the most "
          "rows that can ever arrive",
          name, recv_capacity, most_rows);
    }
    if (static_cast<int64_t>(recv_row_capacity()) * top_k > (int64_t{1} << 30)) {
      return InvalidArgumentError("group '{}': recv_capacity * top_k = {} exceeds 2^30", name,
                                  static_cast<int64_t>(recv_row_capacity()) * top_k);
    }
    return OkStatus();
  }
  if (recv_capacity != 0 || sm_budget != 0) {
    return InvalidArgumentError(
        "group '{}': recv_capacity={} and sm_budget={} apply to algorithm = high_throughput "
        "only; leave them 0 with {}",
        name, recv_capacity, sm_budget, AlgorithmName(algorithm));
  }
  const int64_t rows = static_cast<int64_t>(local_experts()) * capacity();
  if (rows > (int64_t{1} << 30)) {
    return InvalidArgumentError(
        "group '{}': local_experts * expert_capacity = {} rows exceeds 2^30", name, rows);
  }
  return OkStatus();
}

bool GroupConfig::SameShape(const GroupConfig& o) const {
  return ranks == o.ranks && spans_nodes == o.spans_nodes && experts == o.experts &&
         hidden == o.hidden && max_tokens_per_rank == o.max_tokens_per_rank && top_k == o.top_k && dtype == o.dtype &&
         algorithm == o.algorithm && layout == o.layout && capacity() == o.capacity() &&
         recv_row_capacity() == o.recv_row_capacity() &&
         effective_sm_budget() == o.effective_sm_budget() &&
         dispatch_format == o.dispatch_format &&
         (!fp8_dispatch() || scale_format == o.scale_format);
}

std::string GroupConfig::ToString() const {
  const std::string payload =
      fp8_dispatch() ? fmt::format(" dispatch fp8_e4m3/{}", ScaleFormatName(scale_format)) : "";
  const std::string spanning =
      spans_nodes ? fmt::format(" global ranks [{}]", fmt::join(ranks, ",")) : "";
  if (high_throughput()) {
    return fmt::format("group '{}' (R={} E={} H={} T={} K={} M={} SMs={} {}{} high_throughput{})",
                       name, world_size(), experts, hidden, max_tokens_per_rank, top_k,
                       recv_row_capacity(), effective_sm_budget(), DTypeName(dtype), payload,
                       spanning);
  }
  return fmt::format("group '{}' (R={} E={} H={} T={} K={} C={} {}{} {} {}{})", name,
                     world_size(), experts, hidden, max_tokens_per_rank, top_k, capacity(),
                     DTypeName(dtype), payload, LayoutName(layout), AlgorithmName(algorithm),
                     spanning);
}

HandleLayout ComputeHandleLayout(const GroupConfig& c) {
  HandleLayout h;
  const size_t R = c.world_size(), L = c.local_experts(), T = c.max_tokens_per_rank, K = c.top_k,
               E = c.experts;
  const size_t row_bytes = c.recv_row_bytes();
  size_t cursor = 0;
  auto place = [&cursor](size_t bytes, size_t* offset, size_t* size) {
    *offset = cursor;
    *size = bytes;
    cursor = AlignUp(cursor + bytes);
  };
  if (c.high_throughput()) {
    h.recv_rows = static_cast<size_t>(c.recv_row_capacity());
    h.expert_rows_entries = static_cast<size_t>(c.expert_rows_capacity());
    place(h.recv_rows * row_bytes, &h.recv_x_offset, &h.recv_x_bytes);
    place(h.recv_rows * 2 * sizeof(int32_t), &h.recv_src_offset, &h.recv_src_bytes);
    place(h.recv_rows * K * sizeof(int32_t), &h.recv_topk_idx_offset, &h.recv_topk_idx_bytes);
    place(h.recv_rows * K * sizeof(float), &h.recv_topk_weights_offset, &h.recv_topk_weights_bytes);
    place(R * sizeof(int32_t), &h.recv_rank_counts_offset, &h.recv_rank_counts_bytes);
    place(R * sizeof(int32_t), &h.recv_rank_offsets_offset, &h.recv_rank_offsets_bytes);
    place(L * sizeof(int32_t), &h.recv_counts_offset, &h.recv_counts_bytes);
    place((L + 1) * sizeof(int32_t), &h.recv_offsets_offset, &h.recv_offsets_bytes);
    place(h.expert_rows_entries * sizeof(int32_t), &h.expert_rows_offset, &h.expert_rows_bytes);
  } else if (c.layout == Layout::kExpertMajor) {
    h.recv_rows = L * static_cast<size_t>(c.capacity());
    place(h.recv_rows * row_bytes, &h.recv_x_offset, &h.recv_x_bytes);
    place(h.recv_rows * 3 * sizeof(int32_t), &h.recv_src_offset, &h.recv_src_bytes);
    place(h.recv_rows * sizeof(float), &h.recv_weights_offset, &h.recv_weights_bytes);
    place(L * sizeof(int32_t), &h.recv_counts_offset, &h.recv_counts_bytes);
    place(L * sizeof(int32_t), &h.recv_offsets_offset, &h.recv_offsets_bytes);
  } else {
    h.recv_rows = R * T;
    place(h.recv_rows * row_bytes, &h.recv_x_offset, &h.recv_x_bytes);
    place(h.recv_rows * K * sizeof(int32_t), &h.recv_topk_idx_offset, &h.recv_topk_idx_bytes);
    place(h.recv_rows * K * sizeof(float), &h.recv_topk_weights_offset, &h.recv_topk_weights_bytes);
    place(R * sizeof(int32_t), &h.recv_counts_offset, &h.recv_counts_bytes);
  }
  if (c.fp8_dispatch()) {
    place(h.recv_rows * c.scale_row_bytes(), &h.recv_scales_offset, &h.recv_scales_bytes);
  }
  h.exported_bytes = cursor;
  h.topk_idx_bytes = AlignUp(T * K * sizeof(int32_t));
  h.topk_weights_bytes = AlignUp(T * K * sizeof(float));
  h.expert_counts_bytes = AlignUp(E * sizeof(int32_t));
  h.slot_bytes = AlignUp(T * K * sizeof(int32_t));
  if (c.high_throughput()) {
    h.dest_row_bytes = AlignUp(T * R * sizeof(int32_t));
    h.dest_counts_bytes = AlignUp(R * sizeof(int32_t));
  }
  return h;
}

}  // namespace epd
