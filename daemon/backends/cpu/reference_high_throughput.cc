// The high-throughput receive layout of docs/design.md §3, written for clarity on host memory.
// It is the oracle of the high-throughput kernels (kernels/ht_dispatch.cu): rows packed by
// (source rank, source token), a token crossing to a rank once, and a per-local-expert gather
// list in ascending row order.
#include <utility>

#include "daemon/backends/cpu/reference_ops.h"

namespace epd::reference {
namespace {

// Whether token t of `src` selects an expert on rank d.
bool GoesTo(const GroupConfig& c, const SourceRank& src, int t, int d) {
  for (int k = 0; k < c.top_k; ++k) {
    const int32_t e = src.topk_idx[static_cast<size_t>(t) * c.top_k + k];
    if (e >= 0 && c.rank_of_expert(e) == d) return true;
  }
  return false;
}

}  // namespace

int64_t RowsTo(const GroupConfig& c, const SourceRank& src, int d) {
  int64_t rows = 0;
  for (int t = 0; t < src.num_tokens; ++t) rows += GoesTo(c, src, t, d) ? 1 : 0;
  return rows;
}

std::vector<int64_t> RowsPerDestination(const GroupConfig& c,
                                        const std::vector<SourceRank>& ranks) {
  std::vector<int64_t> rows(c.world_size(), 0);
  for (int d = 0; d < c.world_size(); ++d) {
    for (const SourceRank& src : ranks) rows[d] += RowsTo(c, src, d);
  }
  return rows;
}

void DispatchReceiveHighThroughput(const GroupConfig& c, int d,
                                   const std::vector<SourceRank>& ranks,
                                   const ReceiveBuffers& out) {
  const int R = c.world_size(), L = c.local_experts(), K = c.top_k;
  int64_t row = 0;
  for (int s = 0; s < R; ++s) {
    const SourceRank& src = ranks[s];
    out.recv_rank_offsets[s] = static_cast<int32_t>(row);
    for (int t = 0; t < src.num_tokens; ++t) {
      if (!GoesTo(c, src, t, d)) continue;
      WriteRow(c, src, t, out, static_cast<size_t>(row));
      out.recv_src[row * 2 + 0] = s;
      out.recv_src[row * 2 + 1] = t;
      for (int k = 0; k < K; ++k) {
        const size_t i = static_cast<size_t>(t) * K + k;
        const int32_t e = src.topk_idx[i];
        const bool here = e >= 0 && c.rank_of_expert(e) == d;
        out.recv_topk_idx[row * K + k] = here ? e - d * L : -1;
        out.recv_topk_weights[row * K + k] = here ? src.topk_weights[i] : 0.0f;
      }
      ++row;
    }
    out.recv_rank_counts[s] = static_cast<int32_t>(row - out.recv_rank_offsets[s]);
  }
  // Gather list: expert l's rows ascending; a row selecting l at several k is listed once.
  const int64_t rows = row;
  auto selects = [&](int64_t r, int l) {
    for (int k = 0; k < K; ++k) {
      if (out.recv_topk_idx[r * K + k] == l) return true;
    }
    return false;
  };
  int64_t entry = 0;
  for (int l = 0; l < L; ++l) {
    out.recv_offsets[l] = static_cast<int32_t>(entry);
    for (int64_t r = 0; r < rows; ++r) {
      if (selects(r, l)) out.expert_rows[entry++] = static_cast<int32_t>(r);
    }
    out.recv_counts[l] = static_cast<int32_t>(entry - out.recv_offsets[l]);
  }
  out.recv_offsets[L] = static_cast<int32_t>(entry);
}

void ComputeSlotsHighThroughput(const GroupConfig& c, int s, const std::vector<SourceRank>& ranks,
                                int32_t* slot) {
  std::vector<int64_t> first_row(c.world_size(), 0);
  for (int d = 0; d < c.world_size(); ++d) {
    for (int earlier = 0; earlier < s; ++earlier) first_row[d] += RowsTo(c, ranks[earlier], d);
  }
  ComputeSlotsHighThroughputFrom(c, ranks[s], std::move(first_row), slot);
}

void ComputeSlotsHighThroughputFrom(const GroupConfig& c, const SourceRank& me,
                                    std::vector<int64_t> next, int32_t* slot) {
  const int R = c.world_size(), K = c.top_k;
  // next[d]: the packed row on rank d of this rank's next token that goes there.
  for (int t = 0; t < me.num_tokens; ++t) {
    std::vector<bool> sent(R, false);
    for (int k = 0; k < K; ++k) {
      const size_t i = static_cast<size_t>(t) * K + k;
      const int32_t e = me.topk_idx[i];
      const int d = e >= 0 ? c.rank_of_expert(e) : -1;
      slot[i] = -1;
      if (d < 0 || sent[d]) continue;
      sent[d] = true;
      slot[i] = static_cast<int32_t>(next[d]++);
    }
  }
}

}  // namespace epd::reference
