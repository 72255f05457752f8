#include "daemon/backends/cuda/span_support.h"

#include <algorithm>

namespace epd::cuda {
namespace {

int64_t TokenRowBytes(const GroupConfig& c) {
  return static_cast<int64_t>(c.hidden) * static_cast<int64_t>(DTypeSize(c.dtype));
}

}  // namespace

Status CheckSpanningSupported(const GroupConfig& c) {
  if (c.world_size() > kernels::kMaxSpanningRanks) {
    return InvalidArgumentError("group '{}': {} ranks; the cuda backend spans at most {}", c.name,
                                c.world_size(), kernels::kMaxSpanningRanks);
  }
  return OkStatus();
}

kernels::SpanDispatchMessage SpanDispatchMessageOf(const GroupConfig& c) {
  return kernels::SpanDispatchMessageOf(c.max_tokens_per_rank, c.top_k, c.experts, c.world_size(),
                                        static_cast<int64_t>(c.recv_row_bytes()),
                                        static_cast<int64_t>(c.scale_row_bytes()));
}

kernels::SpanShape SpanShapeOf(const GroupConfig& c, int group_rank) {
  kernels::SpanShape s;
  s.world_size = c.world_size();
  s.rank = group_rank;
  s.experts = c.experts;
  s.local_experts = c.local_experts();
  s.top_k = c.top_k;
  s.max_tokens = c.max_tokens_per_rank;
  s.rank_major = !c.high_throughput() && c.layout == Layout::kRankMajor ? 1 : 0;
  s.high_throughput = c.high_throughput() ? 1 : 0;
  s.ue8m0_scales = c.fp8_dispatch() && c.scale_format == ScaleFormat::kUe8m0 ? 1 : 0;
  s.dispatch = SpanDispatchMessageOf(c);
  s.ret = SpanReturnMessageOf(c);
  return s;
}

kernels::SpanReturnMessage SpanReturnMessageOf(const GroupConfig& c) {
  return kernels::SpanReturnMessageOf(c.max_tokens_per_rank, c.top_k,
                                      c.layout == Layout::kRankMajor || c.high_throughput(),
                                      TokenRowBytes(c));
}

int64_t SpanHandleBytesOf(const GroupConfig& c) {
  return kernels::SpanHandleBytes(SpanDispatchMessageOf(c), SpanReturnMessageOf(c), c.world_size(),
                                  c.local_experts());
}

int64_t SpanDispatchBytesSent(const GroupConfig& c) {
  return (c.world_size() - 1) * SpanDispatchMessageOf(c).bytes;
}

int64_t SpanCombineBytesSent(const GroupConfig& c) {
  return (c.world_size() - 1) * SpanReturnMessageOf(c).bytes;
}

bool SpanReadsHeaders(const GroupConfig& c) {
  return c.high_throughput() || c.layout == Layout::kExpertMajor;
}

SpanRows SpanRowsOf(const kernels::SpanShape& s, const int32_t* headers) {
  const int R = s.world_size, L = s.local_experts;
  const int64_t words = kernels::SpanHeaderWords(s.experts, R);
  auto rows_of = [&](int src, int dest) -> int64_t {
    const int32_t* header = headers + src * words;
    if (header[0] != kernels::kSpanMessageOk) return 0;
    if (s.high_throughput) {
      const int64_t rows = header[kernels::kSpanHeaderFixedWords + s.experts + dest];
      return std::clamp<int64_t>(rows, 0, s.max_tokens);
    }
    int64_t selections = 0;  // of dest's experts
    for (int e = dest * L; e < (dest + 1) * L; ++e) {
      selections += header[kernels::kSpanHeaderFixedWords + e];
    }
    return std::clamp<int64_t>(selections, 0,
                               static_cast<int64_t>(s.max_tokens) * s.ret.rows_per_token);
  };
  SpanRows rows;
  rows.in.resize(R);
  rows.out.resize(R);
  for (int p = 0; p < R; ++p) {
    rows.in[p] = rows_of(p, s.rank);
    rows.out[p] = rows_of(s.rank, p);
  }
  return rows;
}

}  // namespace epd::cuda
