#include "daemon/backends/cpu/spanning_ops.h"

#include <cstring>
#include <span>

namespace epd::spanning {
namespace {

// Dispatch header, int32 words: [n (-1: abandoned), pre-quantized, tokens for each of the R
// ranks, selections of each of the E experts].
constexpr int kAbandoned = -1;
size_t HeaderWords(const GroupConfig& c) { return 2 + c.world_size() + c.experts; }

size_t XRowBytes(const GroupConfig& c, bool prequantized) {
  return prequantized ? c.recv_row_bytes() : static_cast<size_t>(c.hidden) * DTypeSize(c.dtype);
}
size_t RecordBytes(const GroupConfig& c, bool prequantized) {
  const size_t K = c.top_k;
  return sizeof(int32_t) * (1 + K) + sizeof(float) * K + XRowBytes(c, prequantized) +
         (prequantized ? c.scale_row_bytes() : 0);
}

// High-throughput rows each destination receives from the sources before `source_rank` (R:
// from all). A header's token count for destination d is exactly the packed rows that source
// sends to d (a token crosses to a rank once), so the headers give the whole row matrix.
std::vector<int64_t> RowsBefore(const GroupConfig& c,
                                const std::vector<std::vector<int32_t>>& headers,
                                int source_rank) {
  std::vector<int64_t> rows(c.world_size(), 0);
  for (int s = 0; s < source_rank; ++s) {
    for (int d = 0; d < c.world_size(); ++d) rows[d] += headers[s][2 + d];
  }
  return rows;
}

bool SelectsRank(const GroupConfig& c, const int32_t* ids, int d) {
  for (int k = 0; k < c.top_k; ++k) {
    if (ids[k] >= 0 && c.rank_of_expert(ids[k]) == d) return true;
  }
  return false;
}

std::vector<std::span<const char>> ConstViews(const std::vector<std::vector<char>>& buffers) {
  std::vector<std::span<const char>> views;
  for (const auto& b : buffers) views.emplace_back(b.data(), b.size());
  return views;
}
std::vector<std::span<char>> MutableViews(std::vector<std::vector<char>>& buffers) {
  std::vector<std::span<char>> views;
  for (auto& b : buffers) views.emplace_back(b.data(), b.size());
  return views;
}

// The first abandoning peer's failure, or OK.
Status PeerAbandoned(const GroupConfig& c, int me, const std::vector<int32_t>& first_words,
                     const Status& mine, std::string_view op) {
  if (!mine.ok()) return mine;
  for (int s = 0; s < c.world_size(); ++s) {
    if (s != me && first_words[s] == kAbandoned) {
      return FailedPreconditionError(
          "{} of group '{}': group rank {} (node {}) gave the op up (its request failed)", op,
          c.name, s, c.NodeOf(s));
    }
  }
  return OkStatus();
}

// Every rank's restriction to `me`, rebuilt from the messages it sent here.
struct Assembled {
  std::vector<std::vector<char>> x, scales;
  std::vector<std::vector<int32_t>> ids;
  std::vector<std::vector<float>> weights;
  std::vector<reference::SourceRank> sources;
};

// The pack step of dispatch: one message per destination rank holding, in token order, each
// token with a selection there (token index, its top-k ids with other ranks' masked to -1,
// weights, row, scales). Another layout packs its own messages here.
std::vector<std::vector<char>> PackDispatchMessages(const GroupConfig& c,
                                                    const reference::SourceRank& mine,
                                                    const std::vector<int32_t>& header) {
  const int R = c.world_size(), K = c.top_k;
  const bool prequantized = mine.x_scales != nullptr;
  const size_t x_row = XRowBytes(c, prequantized), scale_row = c.scale_row_bytes();
  std::vector<std::vector<char>> payload_out(R);
  for (int d = 0; d < R; ++d) {
    payload_out[d].resize(static_cast<size_t>(header[2 + d]) * RecordBytes(c, prequantized));
    char* cursor = payload_out[d].data();
    for (int t = 0; t < mine.num_tokens; ++t) {
      const int32_t* ids = mine.topk_idx + t * K;
      if (!SelectsRank(c, ids, d)) continue;
      std::memcpy(cursor, &t, sizeof(int32_t));
      cursor += sizeof(int32_t);
      for (int k = 0; k < K; ++k) {
        const int32_t id = ids[k] >= 0 && c.rank_of_expert(ids[k]) == d ? ids[k] : -1;
        std::memcpy(cursor, &id, sizeof(int32_t));
        cursor += sizeof(int32_t);
      }
      std::memcpy(cursor, mine.topk_weights + t * K, sizeof(float) * K);
      cursor += sizeof(float) * K;
      std::memcpy(cursor, static_cast<const char*>(mine.x) + t * x_row, x_row);
      cursor += x_row;
      if (prequantized) {
        std::memcpy(cursor, static_cast<const char*>(mine.x_scales) + t * scale_row, scale_row);
        cursor += scale_row;
      }
    }
  }
  return payload_out;
}

// The assemble step of dispatch: rebuilds every source's routing restricted to this rank from
// its message and lays the rows out with the reference, so the result is a single daemon's;
// records the rows each source's selections read here, for the combine. Another layout
// assembles its own buffers here.
Status AssembleDispatchLayout(const GroupConfig& c, int me,
                              const std::vector<std::vector<int32_t>>& headers,
                              const std::vector<std::vector<char>>& payload_in,
                              const reference::ReceiveBuffers& out, ReturnRows* rows) {
  const int R = c.world_size(), K = c.top_k;
  const size_t scale_row = c.scale_row_bytes();
  Assembled a;
  a.x.resize(R);
  a.scales.resize(R);
  a.ids.resize(R);
  a.weights.resize(R);
  a.sources.resize(R);
  for (int s = 0; s < R; ++s) {
    const int n = headers[s][0];
    const bool quantized = headers[s][1] != 0;
    const size_t row = XRowBytes(c, quantized);
    a.x[s].assign(static_cast<size_t>(n) * row, 0);
    a.scales[s].assign(quantized ? static_cast<size_t>(n) * scale_row : 0, 0);
    a.ids[s].assign(static_cast<size_t>(n) * K, -1);
    a.weights[s].assign(static_cast<size_t>(n) * K, 0.0f);
    const char* cursor = payload_in[s].data();
    for (int i = 0; i < headers[s][2 + me]; ++i) {
      int32_t t = 0;
      std::memcpy(&t, cursor, sizeof(int32_t));
      cursor += sizeof(int32_t);
      if (t < 0 || t >= n) {
        return InternalError("dispatch of group '{}': group rank {} sent token {} of {}", c.name,
                             s, t, n);
      }
      std::memcpy(&a.ids[s][t * K], cursor, sizeof(int32_t) * K);
      cursor += sizeof(int32_t) * K;
      std::memcpy(&a.weights[s][t * K], cursor, sizeof(float) * K);
      cursor += sizeof(float) * K;
      std::memcpy(&a.x[s][t * row], cursor, row);
      cursor += row;
      if (quantized) {
        std::memcpy(&a.scales[s][t * scale_row], cursor, scale_row);
        cursor += scale_row;
      }
    }
    reference::SourceRank& src = a.sources[s];
    src.num_tokens = n;
    src.x = a.x[s].data();
    src.topk_idx = a.ids[s].data();
    src.topk_weights = a.weights[s].data();
    src.expert_counts = &headers[s][2 + R];
    src.x_scales = quantized ? a.scales[s].data() : nullptr;
  }
  reference::DispatchReceive(c, me, a.sources, out);

  // Rows each source's selections read here, in (token, k) order, for the combine.
  rows->rows_for_source.assign(R, {});
  std::vector<int32_t> slots(static_cast<size_t>(c.max_tokens_per_rank) * K);
  for (int s = 0; s < R; ++s) {
    reference::ComputeSlots(c, s, a.sources, slots.data());
    for (size_t i = 0; i < static_cast<size_t>(headers[s][0]) * K; ++i) {
      if (slots[i] >= 0) rows->rows_for_source[s].push_back(slots[i]);
    }
  }
  return OkStatus();
}

}  // namespace

Status Dispatch(GlooRankLink& link, const GroupConfig& c, int me,
                const reference::SourceRank& mine, const Status& abandon,
                const reference::ReceiveBuffers& out, int32_t* my_slots, ReturnRows* rows,
                std::chrono::milliseconds timeout) {
  const int R = c.world_size(), K = c.top_k, E = c.experts;
  const bool prequantized = mine.x_scales != nullptr;

  // --- counts ---
  std::vector<int32_t> header(HeaderWords(c), 0);
  header[0] = abandon.ok() ? mine.num_tokens : kAbandoned;
  header[1] = prequantized ? 1 : 0;
  if (abandon.ok()) {
    for (int t = 0; t < mine.num_tokens; ++t) {
      for (int d = 0; d < R; ++d) header[2 + d] += SelectsRank(c, mine.topk_idx + t * K, d);
    }
    std::memcpy(&header[2 + R], mine.expert_counts, sizeof(int32_t) * E);
  }
  const size_t header_bytes = header.size() * sizeof(int32_t);
  std::vector<std::vector<char>> header_out(R), header_in(R);
  for (int p = 0; p < R; ++p) {
    header_out[p].assign(reinterpret_cast<const char*>(header.data()),
                         reinterpret_cast<const char*>(header.data()) + header_bytes);
    header_in[p].resize(header_bytes);
  }
  EPD_RETURN_IF_ERROR(link.Exchange(ConstViews(header_out), MutableViews(header_in), timeout,
                                    fmt::format("dispatch counts of group '{}'", c.name)));
  std::vector<std::vector<int32_t>> headers(R, std::vector<int32_t>(header.size()));
  std::vector<int32_t> first_words(R);
  for (int s = 0; s < R; ++s) {
    std::memcpy(headers[s].data(), header_in[s].data(), header_bytes);
    first_words[s] = headers[s][0];
  }
  EPD_RETURN_IF_ERROR(PeerAbandoned(c, me, first_words, abandon, "dispatch"));

  // Every rank sees every count, so every rank reports the same overflow and none sends.
  std::vector<reference::SourceRank> counted(R);
  for (int s = 0; s < R; ++s) {
    counted[s].num_tokens = headers[s][0];
    counted[s].expert_counts = &headers[s][2 + R];
  }
  if (c.high_throughput()) {
    EPD_RETURN_IF_ERROR(reference::CheckRowCapacity(c, RowsBefore(c, headers, R)));
  } else {
    EPD_RETURN_IF_ERROR(reference::CheckCapacity(c, counted));
  }

  // --- payload: one message per destination ---
  std::vector<std::vector<char>> payload_out = PackDispatchMessages(c, mine, header), payload_in(R);
  for (int s = 0; s < R; ++s) {
    payload_in[s].resize(static_cast<size_t>(headers[s][2 + me]) *
                         RecordBytes(c, headers[s][1] != 0));
  }
  EPD_RETURN_IF_ERROR(link.Exchange(ConstViews(payload_out), MutableViews(payload_in), timeout,
                                    fmt::format("dispatch payload of group '{}'", c.name)));

  // --- assemble this rank's layout ---
  EPD_RETURN_IF_ERROR(AssembleDispatchLayout(c, me, headers, payload_in, out, rows));
  // This rank's own selections' rows on their destinations: only counts and its own routing.
  if (c.high_throughput()) {
    reference::ComputeSlotsHighThroughputFrom(c, mine, RowsBefore(c, headers, me), my_slots);
    return OkStatus();
  }
  counted[me] = mine;
  reference::ComputeSlots(c, me, counted, my_slots);
  return OkStatus();
}

Status Combine(GlooRankLink& link, const GroupConfig& c, int me,
               const reference::SourceRank& mine, const Status& abandon, const int32_t* my_slots,
               const ReturnRows& rows, const void* expert_out, void* out,
               std::chrono::milliseconds timeout) {
  const int R = c.world_size(), K = c.top_k;
  // --- counts: whether every rank takes part (the row counts are known from the dispatch) ---
  const int32_t taking_part = abandon.ok() ? 0 : kAbandoned;
  std::vector<std::vector<char>> flag_out(R), flag_in(R, std::vector<char>(sizeof(int32_t)));
  for (int p = 0; p < R; ++p) {
    flag_out[p].assign(reinterpret_cast<const char*>(&taking_part),
                       reinterpret_cast<const char*>(&taking_part) + sizeof(int32_t));
  }
  EPD_RETURN_IF_ERROR(link.Exchange(ConstViews(flag_out), MutableViews(flag_in), timeout,
                                    fmt::format("combine counts of group '{}'", c.name)));
  std::vector<int32_t> first_words(R);
  for (int s = 0; s < R; ++s) std::memcpy(&first_words[s], flag_in[s].data(), sizeof(int32_t));
  EPD_RETURN_IF_ERROR(PeerAbandoned(c, me, first_words, abandon, "combine"));
  if (static_cast<int>(rows.rows_for_source.size()) != R) {
    return FailedPreconditionError("combine of group '{}': no dispatch on this handle before it",
                                   c.name);
  }

  // --- payload: each destination returns its expert-output rows to their sources ---
  const size_t row_bytes = static_cast<size_t>(c.hidden) * DTypeSize(c.dtype);
  std::vector<std::vector<char>> rows_out(R), rows_in(R);
  for (int s = 0; s < R; ++s) {
    rows_out[s].resize(rows.rows_for_source[s].size() * row_bytes);
    char* cursor = rows_out[s].data();
    for (int32_t row : rows.rows_for_source[s]) {
      std::memcpy(cursor, static_cast<const char*>(expert_out) + row * row_bytes, row_bytes);
      cursor += row_bytes;
    }
  }
  // This rank's selections, renumbered into the compact rows each destination returns.
  std::vector<int32_t> compact(static_cast<size_t>(mine.num_tokens) * K, -1);
  std::vector<int32_t> received(R, 0);
  for (size_t i = 0; i < compact.size(); ++i) {
    if (my_slots[i] < 0) continue;
    compact[i] = received[c.rank_of_expert(mine.topk_idx[i])]++;
  }
  for (int d = 0; d < R; ++d) rows_in[d].resize(static_cast<size_t>(received[d]) * row_bytes);
  EPD_RETURN_IF_ERROR(link.Exchange(ConstViews(rows_out), MutableViews(rows_in), timeout,
                                    fmt::format("combine payload of group '{}'", c.name)));
  std::vector<const void*> returned(R);
  for (int d = 0; d < R; ++d) returned[d] = rows_in[d].data();
  reference::Combine(c, mine, compact.data(), returned, out);
  return OkStatus();
}

}  // namespace epd::spanning
