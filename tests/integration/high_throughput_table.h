// The table of high-throughput cases every HT test runs (single daemon, spanning daemons, fp8):
// token counts n in {0, 1, T-1, T} rotating over the ranks, and three routings.
#pragma once

#include <string_view>

#include "client/examples/moe_math.h"

namespace epd::testing {

enum class HtRouting {
  kRandom,       // example::MakeInputs' routing, with some -1 entries
  kAllMinusOne,  // every selection -1: nothing crosses
  kHotExpert,    // expert 1 at k 0 and the next experts after it: every token crosses to rank 0
};
inline constexpr HtRouting kHtRoutings[] = {HtRouting::kRandom, HtRouting::kAllMinusOne,
                                            HtRouting::kHotExpert};
std::string_view HtRoutingName(HtRouting routing);

// Rotations of the token-count table: rank s sends HtTableTokens(p, s, rotation) tokens.
inline constexpr int kHtRotations = 4;
int HtTableTokens(const example::Problem& p, int rank, int rotation);

// Rank `rank`'s inputs of one table case (deterministic in rank and iteration).
example::RankInputs HtTableInputs(const example::Problem& p, int rank, int iteration, int n,
                                  HtRouting routing);

}  // namespace epd::testing
