// The messages a group that spans daemons exchanges through NCCL on the cuda backend (both
// algorithms, token-dtype or fp8 dispatch) (docs/design.md §9, "cuda transport"). Plain C++17
// constexpr, shared by the kernels (kernels/span_exchange.cuh), the backend that sizes the
// buffers and the exchanges, and the unit tests.
//
// Buffers always have room for T rows per message, from the group constants only (T, K, E, L,
// R, H, dtypes). What is sent differs by algorithm:
// - low-latency: the whole dispatch message, one exchange per dispatch and no host
//   synchronisation, however many tokens select each destination (the price is bandwidth: T
//   rows every time);
// - high-throughput: counts first, then payload. The dispatch's headers go in one exchange;
//   once they arrived the host reads every pair's row count and a second exchange sends each
//   message's entries, scales and only its rows.
// Combine return messages carry only what the dispatch brought, sized by the host from the
// dispatch's headers, once they reached it: high-throughput the rows the dispatch sent,
// expert-major low-latency the selections (its headers' per-expert counts); rank-major
// low-latency returns whole messages.
//
// Dispatch message from source s to destination d (one per (s, d), also s == d, which the
// source writes straight into its own receive buffer):
//   header  int32 [0] status (kSpanMessageOk / kSpanMessageAbandoned), [1] n_s,
//           [2, 2 + E) s's selections of every expert (high-throughput: its tokens, a token
//           counted once per expert), [2 + E, 2 + E + R) high-throughput: s's rows to every
//           rank (low-latency: 0). All of them, so that every rank checks every expert's
//           (every rank's) capacity and all agree on an overflow.
//   entries T x int32 [1 + 3K]: entry t = token t of s: [its message row: t (low-latency), or
//           its index among s's rows to d (high-throughput: the routing bind's dest_row, so the
//           rows are packed and d places them without a scan); -1 when t selects nothing on d
//           or t >= n_s; ids[K] with other ranks' ids masked to -1; local_rank[K] (the
//           selection's index among s's selections of its expert, as the routing bind ranked
//           it; high-throughput: -1 for a repeat of an expert in one token); weight bits[K] (0
//           where masked)]
//   scales  fp8 dispatch only, T x scale_row_bytes: message row i's scales (H / 128 of fp32 or
//           ue8m0), quantized by the source's pack kernel or copied from the frontend's x_scales
//   rows    T x row_bytes: message row i (entry[0] == i; low-latency rows where entry t is
//           absent are unwritten): its bytes in the token dtype, or with fp8 dispatch its e4m3
//           codes (H bytes). Last, so that a high-throughput message ends after its rows.
// Combine return message from destination d to source s:
//   header  int32 [0] status
//   rows    row_bytes each, in the token dtype (at most T x J: the buffers' room):
//           - expert-major low-latency (J = K): the expert output of each of s's selections of
//             d's experts, by local expert, then in s's own ranking of the expert's selections
//             (local_rank): selection r of d's local expert l is row r + the sum of s's
//             counts of d's experts before l. Both sides know s's per-expert counts (s its
//             own, d from s's header), so the message carries exactly s's selections to d;
//           - rank-major low-latency (J = 1): row t = d's pre-reduced row of s's token t;
//           - high-throughput (J = 1): row i = d's pre-reduced row of s's packed row i to d.
#pragma once

#include <cstdint>

namespace epd::kernels {

inline constexpr int64_t kSpanMessageAlign = 256;
inline constexpr int32_t kSpanMessageOk = 0;
inline constexpr int32_t kSpanMessageAbandoned = -1;
inline constexpr int kSpanHeaderFixedWords = 2;
// Ranks of a spanning group the cuda kernels index (grid dimension y of the per-source kernels).
inline constexpr int kMaxSpanningRanks = 4096;

constexpr int64_t SpanAlignUp(int64_t bytes) {
  return (bytes + kSpanMessageAlign - 1) / kSpanMessageAlign * kSpanMessageAlign;
}

struct SpanDispatchMessage {
  int64_t entry_words = 0;     // int32 words of one token's entry: 1 + 3K
  int64_t entries_offset = 0;  // bytes from the message start (after the header)
  int64_t rows_offset = 0;
  int64_t row_bytes = 0;  // of a received row: the token dtype's, or H with fp8 dispatch
  int64_t scales_offset = 0;
  int64_t scale_row_bytes = 0;  // 0 without fp8 dispatch
  int64_t bytes = 0;  // the whole message, a multiple of kSpanMessageAlign
};

constexpr SpanDispatchMessage SpanDispatchMessageOf(int64_t max_tokens, int64_t top_k,
                                                    int64_t experts, int64_t world_size,
                                                    int64_t row_bytes,
                                                    int64_t scale_row_bytes = 0) {
  SpanDispatchMessage m;
  m.entry_words = 1 + 3 * top_k;
  m.entries_offset = SpanAlignUp((kSpanHeaderFixedWords + experts + world_size) * 4);
  m.scales_offset = m.entries_offset + SpanAlignUp(max_tokens * m.entry_words * 4);
  m.scale_row_bytes = scale_row_bytes;
  m.rows_offset = m.scales_offset + SpanAlignUp(max_tokens * scale_row_bytes);
  m.row_bytes = row_bytes;
  m.bytes = m.rows_offset + SpanAlignUp(max_tokens * row_bytes);
  return m;
}

// High-throughput: the header words (the first exchange), and the bytes after them that a
// message carrying `rows` rows sends (the second exchange: entries, scales, those rows).
constexpr int64_t SpanHeaderWords(int64_t experts, int64_t world_size) {
  return kSpanHeaderFixedWords + experts + world_size;
}
constexpr int64_t SpanDispatchBodyBytes(const SpanDispatchMessage& m, int64_t rows) {
  return m.rows_offset - m.entries_offset + rows * m.row_bytes;
}

struct SpanReturnMessage {
  int64_t rows_per_token = 0;  // J
  int64_t rows_offset = 0;
  int64_t row_bytes = 0;  // a token's in the token dtype (what combine sums)
  int64_t bytes = 0;
};

// pre_reduced: rank-major and high-throughput groups (one row per token and destination).
constexpr SpanReturnMessage SpanReturnMessageOf(int64_t max_tokens, int64_t top_k, bool pre_reduced,
                                                int64_t row_bytes) {
  SpanReturnMessage m;
  m.rows_per_token = pre_reduced ? 1 : top_k;
  m.rows_offset = kSpanMessageAlign;
  m.row_bytes = row_bytes;
  m.bytes = m.rows_offset + SpanAlignUp(max_tokens * m.rows_per_token * row_bytes);
  return m;
}

// The bytes of a return message carrying `rows` rows back (high-throughput: the packed rows;
// expert-major low-latency: the selections).
constexpr int64_t SpanReturnBytes(const SpanReturnMessage& m, int64_t rows) {
  return m.rows_offset + rows * m.row_bytes;
}

// One rank's view of a group's exchange: the group constants the kernels index with.
struct SpanShape {
  int world_size = 0;
  int rank = 0;  // this rank's group rank
  int experts = 0;
  int local_experts = 0;
  int top_k = 0;
  int max_tokens = 0;
  int rank_major = 0;
  int high_throughput = 0;  // the packed layout (and pre-reduced combine rows)
  int ue8m0_scales = 0;     // fp8 dispatch: scales are ue8m0 bytes, else fp32
  SpanDispatchMessage dispatch;
  SpanReturnMessage ret;
};

// A destination's plan of the last dispatch, kept for the combine after it: int32
// [0] go (1: rows were written), [1, 1 + L) expert offsets, [1 + L, 1 + L + L * R) base row
// of source s inside local expert l at 1 + L + l * R + s (high-throughput: inside the
// expert's gather list), then R words: high-throughput, source s's first packed row, then
// L * R words: expert-major low-latency, the first return row of local expert l in the
// return message to source s (SpanPlanReturnBaseWord).
constexpr int64_t SpanPlanWords(int64_t local_experts, int64_t world_size) {
  return 1 + local_experts + 2 * local_experts * world_size + world_size;
}
constexpr int64_t SpanPlanFirstRowWord(int64_t local_experts, int64_t world_size, int64_t src) {
  return 1 + local_experts + local_experts * world_size + src;
}
constexpr int64_t SpanPlanReturnBaseWord(int64_t local_experts, int64_t world_size, int64_t src,
                                         int64_t local_expert) {
  return 1 + local_experts + local_experts * world_size + world_size + src * local_experts +
         local_expert;
}

// Device bytes one rank's handle holds for the exchange: dispatch send and receive (R messages
// each), combine return send and receive (R each), and the plan.
constexpr int64_t SpanHandleBytes(const SpanDispatchMessage& d, const SpanReturnMessage& r,
                                  int64_t world_size, int64_t local_experts) {
  return 2 * world_size * d.bytes + 2 * world_size * r.bytes +
         SpanAlignUp(SpanPlanWords(local_experts, world_size) * 4);
}

}  // namespace epd::kernels
