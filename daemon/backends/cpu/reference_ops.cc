#include "daemon/backends/cpu/reference_ops.h"

#include <cstring>

#include "common/fp8.h"
#include "common/routing_errors.h"

namespace epd::reference {
namespace {

int64_t LoadIndex(const void* topk_idx, DType dtype, size_t i) {
  return dtype == DType::kInt64 ? static_cast<const int64_t*>(topk_idx)[i]
                                : static_cast<const int32_t*>(topk_idx)[i];
}

size_t RowBytes(const GroupConfig& c) { return static_cast<size_t>(c.hidden) * DTypeSize(c.dtype); }

void ZeroRow(const GroupConfig& c, const ReceiveBuffers& out, size_t row) {
  std::memset(static_cast<char*>(out.recv_x) + row * c.recv_row_bytes(), 0, c.recv_row_bytes());
  if (c.fp8_dispatch()) {
    std::memset(static_cast<char*>(out.recv_scales) + row * c.scale_row_bytes(), 0,
                c.scale_row_bytes());
  }
}

// Selections of expert e made by ranks before `rank`.
int64_t SelectionsBefore(const std::vector<SourceRank>& ranks, int rank, int expert) {
  int64_t total = 0;
  for (int s = 0; s < rank; ++s) total += ranks[s].expert_counts[expert];
  return total;
}

// Packed start row of each local expert of rank d.
std::vector<int32_t> ExpertOffsets(const GroupConfig& c, int d,
                                   const std::vector<SourceRank>& ranks) {
  const int L = c.local_experts();
  std::vector<int32_t> offsets(L);
  int64_t cursor = 0;
  for (int l = 0; l < L; ++l) {
    offsets[l] = static_cast<int32_t>(cursor);
    cursor += SelectionsBefore(ranks, c.world_size(), d * L + l);
  }
  return offsets;
}

}  // namespace

ReceiveBuffers ReceiveBuffersAt(void* base, const HandleLayout& h) {
  auto at = [base](size_t offset, size_t bytes) -> char* {
    return bytes == 0 ? nullptr : static_cast<char*>(base) + offset;
  };
  ReceiveBuffers b;
  b.recv_x = at(h.recv_x_offset, h.recv_x_bytes);
  b.recv_src = reinterpret_cast<int32_t*>(at(h.recv_src_offset, h.recv_src_bytes));
  b.recv_weights = reinterpret_cast<float*>(at(h.recv_weights_offset, h.recv_weights_bytes));
  b.recv_topk_idx = reinterpret_cast<int32_t*>(at(h.recv_topk_idx_offset, h.recv_topk_idx_bytes));
  b.recv_topk_weights =
      reinterpret_cast<float*>(at(h.recv_topk_weights_offset, h.recv_topk_weights_bytes));
  b.recv_counts = reinterpret_cast<int32_t*>(at(h.recv_counts_offset, h.recv_counts_bytes));
  b.recv_offsets = reinterpret_cast<int32_t*>(at(h.recv_offsets_offset, h.recv_offsets_bytes));
  b.recv_scales = at(h.recv_scales_offset, h.recv_scales_bytes);
  b.recv_rank_counts =
      reinterpret_cast<int32_t*>(at(h.recv_rank_counts_offset, h.recv_rank_counts_bytes));
  b.recv_rank_offsets =
      reinterpret_cast<int32_t*>(at(h.recv_rank_offsets_offset, h.recv_rank_offsets_bytes));
  b.expert_rows = reinterpret_cast<int32_t*>(at(h.expert_rows_offset, h.expert_rows_bytes));
  return b;
}

Status BindRouting(const GroupConfig& c, const void* topk_idx, DType idx_dtype,
                   const float* weights, int n, int32_t* topk_out, float* weights_out,
                   int32_t* expert_counts_out) {
  const int K = c.top_k, E = c.experts;
  // Validate everything before writing, so a rejected update leaves the old routing intact.
  for (int t = 0; t < n; ++t) {
    for (int k = 0; k < K; ++k) {
      int64_t e = LoadIndex(topk_idx, idx_dtype, static_cast<size_t>(t) * K + k);
      if (e < -1 || e >= E) {
        return BadExpertIdError(t, k, e, E);
      }
    }
  }
  std::memset(expert_counts_out, 0, sizeof(int32_t) * E);
  for (int t = 0; t < n; ++t) {
    for (int k = 0; k < K; ++k) {
      const size_t i = static_cast<size_t>(t) * K + k;
      // NOTE: read again, so checked again: the frontend may write its (shared) routing while
      // the update reads it (its bug), and a counter indexed past E would be the daemon's.
      const int64_t loaded = LoadIndex(topk_idx, idx_dtype, i);
      if (loaded < -1 || loaded >= E) return BadExpertIdError(t, k, loaded, E);
      const auto e = static_cast<int32_t>(loaded);
      topk_out[i] = e;
      weights_out[i] = weights != nullptr ? weights[i] : 1.0f;
      if (e >= 0) ++expert_counts_out[e];
    }
  }
  return OkStatus();
}

Status CheckCapacity(const GroupConfig& c, const std::vector<SourceRank>& ranks) {
  if (c.high_throughput()) return CheckRowCapacity(c, RowsPerDestination(c, ranks));
  if (c.layout != Layout::kExpertMajor) return OkStatus();  // rank-major has a slot per token
  for (int e = 0; e < c.experts; ++e) {
    const int64_t total = SelectionsBefore(ranks, c.world_size(), e);
    if (total > c.capacity()) {
      return ResourceExhaustedError(
          "group '{}': expert {} received {} rows, more than expert_capacity={}", c.name, e, total,
          c.capacity());
    }
  }
  return OkStatus();
}

Status CheckRowCapacity(const GroupConfig& c, const std::vector<int64_t>& rows) {
  for (int d = 0; d < c.world_size(); ++d) {
    if (rows[d] > c.recv_row_capacity()) {
      return ResourceExhaustedError(
          "group '{}': group rank {} would receive {} rows, more than recv_capacity={}", c.name, d,
          rows[d], c.recv_row_capacity());
    }
  }
  return OkStatus();
}

void WriteRow(const GroupConfig& c, const SourceRank& src, int t, const ReceiveBuffers& out,
              size_t row) {
  const size_t row_bytes = c.recv_row_bytes();
  char* dst = static_cast<char*>(out.recv_x) + row * row_bytes;
  if (!c.fp8_dispatch()) {
    std::memcpy(dst, static_cast<const char*>(src.x) + t * row_bytes, row_bytes);
    return;
  }
  const size_t scale_bytes = c.scale_row_bytes();
  char* dst_scales = static_cast<char*>(out.recv_scales) + row * scale_bytes;
  if (src.x_scales != nullptr) {
    std::memcpy(dst, static_cast<const char*>(src.x) + t * row_bytes, row_bytes);
    std::memcpy(dst_scales, static_cast<const char*>(src.x_scales) + t * scale_bytes, scale_bytes);
    return;
  }
  QuantizeRowE4m3(static_cast<const uint16_t*>(src.x) + static_cast<size_t>(t) * c.hidden, c.hidden,
                  c.scale_format, reinterpret_cast<uint8_t*>(dst), dst_scales);
}

void DispatchReceive(const GroupConfig& c, int d, const std::vector<SourceRank>& ranks,
                     const ReceiveBuffers& out) {
  if (c.high_throughput()) return DispatchReceiveHighThroughput(c, d, ranks, out);
  const int R = c.world_size(), L = c.local_experts(), K = c.top_k, T = c.max_tokens_per_rank;
  if (c.layout == Layout::kExpertMajor) {
    const std::vector<int32_t> offsets = ExpertOffsets(c, d, ranks);
    for (int l = 0; l < L; ++l) {
      const int e = d * L + l;
      int64_t row = offsets[l];
      for (int s = 0; s < R; ++s) {
        const SourceRank& src = ranks[s];
        for (int t = 0; t < src.num_tokens; ++t) {
          for (int k = 0; k < K; ++k) {
            const size_t i = static_cast<size_t>(t) * K + k;
            if (src.topk_idx[i] != e) continue;
            WriteRow(c, src, t, out, static_cast<size_t>(row));
            out.recv_src[row * 3 + 0] = s;
            out.recv_src[row * 3 + 1] = t;
            out.recv_src[row * 3 + 2] = k;
            out.recv_weights[row] = src.topk_weights[i];
            ++row;
          }
        }
      }
      out.recv_counts[l] = static_cast<int32_t>(row - offsets[l]);
      out.recv_offsets[l] = offsets[l];
    }
    return;
  }

  // Rank-major: one row per (source rank, source token); absent rows are zero, ids -1.
  for (int s = 0; s < R; ++s) {
    const SourceRank& src = ranks[s];
    out.recv_counts[s] = src.num_tokens;
    for (int t = 0; t < T; ++t) {
      const size_t row = static_cast<size_t>(s) * T + t;
      bool present = false;
      for (int k = 0; k < K; ++k) {
        int32_t e = -1;
        float w = 0.0f;
        if (t < src.num_tokens) {
          const size_t i = static_cast<size_t>(t) * K + k;
          if (src.topk_idx[i] >= 0 && c.rank_of_expert(src.topk_idx[i]) == d) {
            e = src.topk_idx[i];
            w = src.topk_weights[i];
            present = true;
          }
        }
        out.recv_topk_idx[row * K + k] = e;
        out.recv_topk_weights[row * K + k] = w;
      }
      if (present) {
        WriteRow(c, src, t, out, row);
      } else {
        ZeroRow(c, out, row);
      }
    }
  }
}

void ComputeSlots(const GroupConfig& c, int s, const std::vector<SourceRank>& ranks,
                  int32_t* slot) {
  if (c.high_throughput()) return ComputeSlotsHighThroughput(c, s, ranks, slot);
  const int L = c.local_experts(), K = c.top_k, T = c.max_tokens_per_rank;
  const SourceRank& me = ranks[s];
  if (c.layout == Layout::kExpertMajor) {
    // Row = packed offset of the expert on its rank + selections of earlier ranks
    //       + earlier selections (t', k') of this rank.
    std::vector<std::vector<int32_t>> offsets(c.world_size());
    std::vector<int64_t> seen(c.experts, 0);
    for (int t = 0; t < me.num_tokens; ++t) {
      for (int k = 0; k < K; ++k) {
        const size_t i = static_cast<size_t>(t) * K + k;
        const int e = me.topk_idx[i];
        if (e < 0) {
          slot[i] = -1;
          continue;
        }
        const int d = c.rank_of_expert(e);
        if (offsets[d].empty()) offsets[d] = ExpertOffsets(c, d, ranks);
        slot[i] =
            static_cast<int32_t>(offsets[d][e % L] + SelectionsBefore(ranks, s, e) + seen[e]++);
      }
    }
    return;
  }
  for (int t = 0; t < me.num_tokens; ++t) {
    for (int k = 0; k < K; ++k) {
      const size_t i = static_cast<size_t>(t) * K + k;
      const int e = me.topk_idx[i];
      bool first_for_rank = e >= 0;
      for (int j = 0; j < k && first_for_rank; ++j) {
        const int ej = me.topk_idx[static_cast<size_t>(t) * K + j];
        if (ej >= 0 && c.rank_of_expert(ej) == c.rank_of_expert(e)) first_for_rank = false;
      }
      slot[i] = first_for_rank ? s * T + t : -1;
    }
  }
}

void Combine(const GroupConfig& c, const SourceRank& me, const int32_t* slot,
             const std::vector<const void*>& expert_out, void* out) {
  const int K = c.top_k, H = c.hidden;
  const size_t row_bytes = RowBytes(c);
  // Rank-major and high-throughput rows were pre-reduced by the frontend: weight 1.
  const bool weighted = c.layout == Layout::kExpertMajor && !c.high_throughput();
  std::vector<float> acc(H);
  for (int t = 0; t < me.num_tokens; ++t) {
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int k = 0; k < K; ++k) {
      const size_t i = static_cast<size_t>(t) * K + k;
      if (slot[i] < 0) continue;
      const int d = c.rank_of_expert(me.topk_idx[i]);
      const char* z = static_cast<const char*>(expert_out[d]) + slot[i] * row_bytes;
      const float w = weighted ? me.topk_weights[i] : 1.0f;
      for (int h = 0; h < H; ++h) {
        const float product = w * LoadAsFloat(z, c.dtype, h);
        acc[h] = acc[h] + product;  // two roundings: matches the device's __fmul_rn/__fadd_rn
      }
    }
    char* out_row = static_cast<char*>(out) + t * row_bytes;
    for (int h = 0; h < H; ++h) StoreFromFloat(out_row, c.dtype, h, acc[h]);
  }
}

}  // namespace epd::reference
