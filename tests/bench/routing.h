// Deterministic benchmark inputs: routing, weights and token values from a documented integer
// hash, so that epd-bench (C++) and baselines/torch_all_to_all.py (Python) build identical
// routing without sharing a library RNG.
//
// Mix(x) (64-bit, every operation modulo 2^64):
//   x += 0x9E3779B97F4A7C15; x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9;
//   x = (x ^ (x >> 27)) * 0x94D049BB133111EB; return x ^ (x >> 31)
// Hash(seed, rank, token, k, attempt) = Mix(Mix(Mix(Mix(seed) ^ rank) ^ token) ^ (k << 20 | attempt))
//
// Random routing, token t of rank r: for k = 0..K-1, attempt = 0, 1, ...:
//   h = Hash(seed, r, t, k, attempt); e = h % E; accept e unless token t already chose it.
// Skewed routing (a few hot experts): the same, except that when (h >> 32) % 100 < hot_percent
//   the candidate is e = h % hot_experts (experts 0..hot_experts-1, all on the first ranks).
// Weights: w[t][k] = (Hash(seed, r, t, k, 0xFFFFF) >> 40) / 2^24, exact in fp32.
// Token values: x[t][h] = ((r * 131 + t * 31 + h * 7) % 257 - 128) / 64, exact in bf16/fp16.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace epd::bench {

enum class RoutingKind { kRandom, kSkewed };

struct RoutingSpec {
  RoutingKind kind = RoutingKind::kRandom;
  uint64_t seed = 1;
  int hot_experts = 8;
  int hot_percent = 50;
};

std::string RoutingName(RoutingKind kind);
StatusOr<RoutingKind> ParseRouting(const std::string& name);

uint64_t Mix(uint64_t x);
uint64_t Hash(uint64_t seed, uint64_t rank, uint64_t token, uint64_t k, uint64_t attempt);

// [n, K] expert ids and weights of one rank.
struct RankRouting {
  std::vector<int32_t> topk_idx;
  std::vector<float> weights;
  int64_t valid_selections = 0;  // entries != -1
};
RankRouting MakeRouting(const RoutingSpec& spec, int rank, int num_tokens, int top_k,
                        int experts);

// Token value x[t][h] of rank r, as a float exactly representable in bf16 and fp16.
inline float TokenValue(int rank, int token, int h) {
  const int v = static_cast<int>((static_cast<int64_t>(rank) * 131 + static_cast<int64_t>(token) * 31 +
                                  static_cast<int64_t>(h) * 7) % 257) - 128;
  return static_cast<float>(v) / 64.0f;
}

}  // namespace epd::bench
