// Geometry of the chunked routing bind (kernels/routing.cuh): plain C++17, no CUDA, so the
// daemon sizes the handle's scratch with the same functions the launcher checks it against.
//
// The chunked bind splits the n tokens into chunks of kRoutingChunkTokens (one warp each): a
// count pass writes per-chunk counts (per expert, and per destination rank for
// high-throughput) and the chunk's first bad id / bad weight; a scan pass turns the counts
// into per-chunk bases and picks the first error; a write pass ranks each chunk from its
// bases. Scratch for n tokens, int32 throughout:
//   counts     [chunks][columns]  columns = E (+ R with high-throughput), exclusive bases
//                                 after the scan
//   bad_id     [chunks]           first bad id's (t, k) index in the chunk, or INT_MAX
//   bad_weight [chunks]           first non-finite weight's index, or INT_MAX
//   rejected   [1]                1 when the scan found an error (the write pass binds nothing)
#pragma once

#include <cstddef>
#include <cstdint>

namespace epd::kernels {

// One warp per chunk: a ballot covers its tokens, so dest rows need no cross-warp prefix.
inline constexpr int kRoutingChunkTokens = 32;
// The smallest n the chunked bind runs for; the daemon allocates no scratch for groups whose
// max_tokens_per_rank stays under it.
inline constexpr int kRoutingChunkedMinTokens = 256;
// From how many tokens the chunked bind is the faster one by default. Measured on 1 x H200
// (H 7168, K 8, E 256): its three launches cost ~20-25 us at any n (low-latency) and ~31-38 us
// (high-throughput), while the single block grows ~17 us (low-latency) and ~34 us
// (high-throughput) per 1000 tokens: 20.7 vs 24.6 us at 1024 low-latency tokens, 36.4 vs
// 30.8 us with high-throughput.
inline constexpr int kRoutingChunkedFasterFromTokens = 2048;
inline constexpr int kRoutingChunkedFasterFromTokensHighThroughput = 1024;

constexpr int RoutingChunkedFrom(bool high_throughput, int chunked_from) {
  const int from = chunked_from > 0 ? chunked_from
                   : high_throughput ? kRoutingChunkedFasterFromTokensHighThroughput
                                     : kRoutingChunkedFasterFromTokens;
  return from < kRoutingChunkedMinTokens ? kRoutingChunkedMinTokens : from;
}

struct RoutingScratchLayout {
  int chunks = 0;
  int columns = 0;
  size_t counts = 0, bad_id = 0, bad_weight = 0, rejected = 0;  // byte offsets
  size_t bytes = 0;
};

constexpr int RoutingChunks(int num_tokens) {
  return num_tokens <= 0 ? 0 : (num_tokens + kRoutingChunkTokens - 1) / kRoutingChunkTokens;
}

constexpr RoutingScratchLayout ComputeRoutingScratch(int num_tokens, int experts, int ranks,
                                                     bool high_throughput) {
  RoutingScratchLayout s;
  s.chunks = RoutingChunks(num_tokens);
  s.columns = experts + (high_throughput ? ranks : 0);
  const size_t chunks = static_cast<size_t>(s.chunks);
  s.counts = 0;
  s.bad_id = s.counts + chunks * static_cast<size_t>(s.columns) * sizeof(int32_t);
  s.bad_weight = s.bad_id + chunks * sizeof(int32_t);
  s.rejected = s.bad_weight + chunks * sizeof(int32_t);
  s.bytes = s.rejected + sizeof(int32_t);
  return s;
}

// Scratch a handle needs for any n <= max_tokens: 0 when the chunked bind never runs.
constexpr size_t RoutingScratchBytes(int max_tokens, int experts, int ranks, bool high_throughput) {
  return max_tokens < kRoutingChunkedMinTokens
             ? 0
             : ComputeRoutingScratch(max_tokens, experts, ranks, high_throughput).bytes;
}

// Whether an update of num_tokens runs chunked given scratch_bytes of scratch; chunked_from
// overrides the default choice (0: RoutingChunkedFrom's), never below the minimum.
constexpr bool UseChunkedRouting(int num_tokens, int experts, int ranks, bool high_throughput,
                                 size_t scratch_bytes, int chunked_from = 0) {
  return num_tokens >= RoutingChunkedFrom(high_throughput, chunked_from) &&
         ComputeRoutingScratch(num_tokens, experts, ranks, high_throughput).bytes <= scratch_bytes;
}

}  // namespace epd::kernels
