#include "tests/bench/routing.h"

#include <algorithm>

namespace epd::bench {

std::string RoutingName(RoutingKind kind) {
  return kind == RoutingKind::kRandom ? "random" : "skewed";
}

StatusOr<RoutingKind> ParseRouting(const std::string& name) {
  if (name == "random") return RoutingKind::kRandom;
  if (name == "skewed") return RoutingKind::kSkewed;
  return InvalidArgumentError("routing = '{}' must be random or skewed", name);
}

uint64_t Mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

uint64_t Hash(uint64_t seed, uint64_t rank, uint64_t token, uint64_t k, uint64_t attempt) {
  return Mix(Mix(Mix(Mix(seed) ^ rank) ^ token) ^ ((k << 20) | attempt));
}

RankRouting MakeRouting(const RoutingSpec& spec, int rank, int num_tokens, int top_k,
                        int experts) {
  RankRouting routing;
  routing.topk_idx.assign(static_cast<size_t>(num_tokens) * top_k, -1);
  routing.weights.assign(static_cast<size_t>(num_tokens) * top_k, 0.0f);
  const int hot = std::max(1, std::min(spec.hot_experts, experts));
  // NOTE: K distinct experts exist only when K <= E; extra k stay -1 (never in our configs).
  const int distinct = std::min(top_k, experts);
  for (int t = 0; t < num_tokens; ++t) {
    int32_t* ids = &routing.topk_idx[static_cast<size_t>(t) * top_k];
    for (int k = 0; k < distinct; ++k) {
      for (uint64_t attempt = 0;; ++attempt) {
        const uint64_t h = Hash(spec.seed, rank, t, k, attempt);
        int32_t e = static_cast<int32_t>(h % static_cast<uint64_t>(experts));
        if (spec.kind == RoutingKind::kSkewed &&
            static_cast<int>((h >> 32) % 100) < spec.hot_percent) {
          e = static_cast<int32_t>(h % static_cast<uint64_t>(hot));
        }
        if (std::find(ids, ids + k, e) == ids + k) {
          ids[k] = e;
          break;
        }
      }
      const uint64_t w = Hash(spec.seed, rank, t, k, 0xFFFFF) >> 40;
      routing.weights[static_cast<size_t>(t) * top_k + k] =
          static_cast<float>(w) / 16777216.0f;
      ++routing.valid_selections;
    }
  }
  return routing;
}

}  // namespace epd::bench
