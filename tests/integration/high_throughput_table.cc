#include "tests/integration/high_throughput_table.h"

namespace epd::testing {

std::string_view HtRoutingName(HtRouting routing) {
  switch (routing) {
    case HtRouting::kRandom:
      return "random";
    case HtRouting::kAllMinusOne:
      return "all -1";
    case HtRouting::kHotExpert:
      return "hot expert";
  }
  return "?";
}

int HtTableTokens(const example::Problem& p, int rank, int rotation) {
  const int table[kHtRotations] = {0, 1, p.max_tokens - 1, p.max_tokens};
  return table[(rank + rotation) % kHtRotations];
}

example::RankInputs HtTableInputs(const example::Problem& p, int rank, int iteration, int n,
                                  HtRouting routing) {
  example::RankInputs in = example::MakeInputs(p, 11, rank, iteration, n, /*dyadic_weights=*/false);
  for (int t = 0; t < n; ++t) {
    for (int k = 0; k < p.top_k; ++k) {
      int32_t& e = in.topk_idx[static_cast<size_t>(t) * p.top_k + k];
      if (routing == HtRouting::kAllMinusOne) e = -1;
      if (routing == HtRouting::kHotExpert) e = (1 + k) % p.experts;
    }
  }
  return in;
}

}  // namespace epd::testing
