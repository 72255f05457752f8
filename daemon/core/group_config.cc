#include "daemon/core/group_config.h"

#include <algorithm>
#include <set>

#include <fmt/ranges.h>

#include "common/limits.h"

namespace epd {

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
    if (spans_nodes && (r < 0 || r >= rank_bound)) {
      return InvalidArgumentError(
          "group '{}': global rank {} is outside the cluster's ranks [0, {}) ({} nodes x {})",
          name, r, rank_bound, span.nodes, span.ranks_per_node);
    }
    if (r < 0 || r >= rank_bound) {
      return InvalidArgumentError("group '{}': rank {} is outside the node's ranks [0, {})", name,
                                  r, node_ranks);
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
  if (algorithm == Algorithm::kHighThroughput) {
    // Refused rather than silently served by the low-latency kernels.
    return UnimplementedError(
        "group '{}': algorithm = high_throughput is not implemented yet; use low_latency", name);
  }
  const int64_t rows = static_cast<int64_t>(local_experts()) * capacity();
  if (rows > (int64_t{1} << 30)) {
    return InvalidArgumentError(
        "group '{}': local_experts * expert_capacity = {} rows exceeds 2^30", name, rows);
  }
  return OkStatus();
}

bool GroupConfig::SameShape(const GroupConfig& o) const {
  return ranks == o.ranks && spans_nodes == o.spans_nodes && experts == o.experts && hidden == o.hidden &&
         max_tokens_per_rank == o.max_tokens_per_rank && top_k == o.top_k && dtype == o.dtype &&
         algorithm == o.algorithm && layout == o.layout && capacity() == o.capacity() &&
         dispatch_format == o.dispatch_format &&
         (!fp8_dispatch() || scale_format == o.scale_format);
}

std::string GroupConfig::ToString() const {
  const std::string payload =
      fp8_dispatch() ? fmt::format(" dispatch fp8_e4m3/{}", ScaleFormatName(scale_format)) : "";
  const std::string spanning =
      spans_nodes ? fmt::format(" global ranks [{}]", fmt::join(ranks, ",")) : "";
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
  if (c.layout == Layout::kExpertMajor) {
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
  return h;
}

}  // namespace epd
