// Pins the routing hash: baselines/torch_all_to_all.py re-implements it in Python and
// baselines/routing_parity_test.py checks the same golden values, so a change on either side
// fails CI instead of silently benchmarking different routings.
#include "tests/bench/routing.h"

#include <gtest/gtest.h>

#include <set>

#include "tests/bench/bench_case.h"

namespace epd::bench {
namespace {

TEST(RoutingTest, RandomMatchesGolden) {
  RoutingSpec spec;
  spec.kind = RoutingKind::kRandom;
  const RankRouting r = MakeRouting(spec, /*rank=*/1, /*tokens=*/4, /*top_k=*/8, /*experts=*/256);
  EXPECT_EQ(std::vector<int32_t>(r.topk_idx.begin(), r.topk_idx.begin() + 8),
            (std::vector<int32_t>{130, 160, 230, 240, 124, 58, 40, 138}));
  EXPECT_EQ(std::vector<int32_t>(r.topk_idx.begin() + 24, r.topk_idx.end()),
            (std::vector<int32_t>{55, 8, 134, 215, 221, 222, 125, 203}));
  EXPECT_EQ(r.weights[0], 0.19382435083389282f);
  EXPECT_EQ(r.weights[1], 0.67741531133651733f);
  EXPECT_EQ(r.valid_selections, 32);
}

TEST(RoutingTest, SkewedMatchesGoldenAndPrefersHotExperts) {
  RoutingSpec spec;
  spec.kind = RoutingKind::kSkewed;
  const RankRouting r = MakeRouting(spec, 1, 4, 8, 256);
  EXPECT_EQ(std::vector<int32_t>(r.topk_idx.begin(), r.topk_idx.begin() + 8),
            (std::vector<int32_t>{130, 160, 230, 240, 4, 2, 0, 60}));
  EXPECT_EQ(std::vector<int32_t>(r.topk_idx.begin() + 24, r.topk_idx.end()),
            (std::vector<int32_t>{7, 8, 6, 215, 221, 2, 125, 3}));
  const RankRouting many = MakeRouting(spec, 0, 512, 8, 256);
  int hot = 0;
  for (int32_t e : many.topk_idx) hot += e < spec.hot_experts;
  EXPECT_GT(hot, static_cast<int>(many.topk_idx.size()) / 4);  // uniform would give 1/32
}

TEST(RoutingTest, ExpertsOfATokenAreDistinct) {
  RoutingSpec spec;
  spec.kind = RoutingKind::kSkewed;
  spec.hot_experts = 2;
  const RankRouting r = MakeRouting(spec, 3, 100, 8, 16);
  for (int t = 0; t < 100; ++t) {
    std::set<int32_t> ids(r.topk_idx.begin() + t * 8, r.topk_idx.begin() + (t + 1) * 8);
    EXPECT_EQ(ids.size(), 8u);
    EXPECT_GE(*ids.begin(), 0);
    EXPECT_LT(*ids.rbegin(), 16);
  }
}

TEST(SummarizeTest, SlowestRankPerIterationMedianAndP99) {
  // Two ranks, four iterations: per-iteration maxima are 3, 5, 2, 9.
  const OpSummary s = Summarize({{1, 5, 2, 9}, {3, 4, 1, 1}}, 8e3);
  EXPECT_EQ(s.iterations, 4);
  EXPECT_DOUBLE_EQ(s.median_us, 4.0);
  EXPECT_DOUBLE_EQ(s.p99_us, 9.0);
  EXPECT_DOUBLE_EQ(s.min_us, 2.0);
  EXPECT_DOUBLE_EQ(s.gbps, 2.0);  // 8000 bytes in 4 us
}

TEST(CasesTest, SweepIsTheUnionOfItsAxesAndRoundTrips) {
  CaseListOptions options;
  options.ranks = 4;
  options.sweep = true;
  options.routings = {RoutingKind::kRandom};
  const std::vector<Case> cases = BuildCases(options);
  // 14 token counts + 4 more hidden sizes (7168 at 128 tokens is shared): low-latency in both
  // layouts, high-throughput in its own.
  EXPECT_EQ(cases.size(), (14u + 4u) * 3u);
  size_t high_throughput = 0;
  for (const Case& c : cases) {
    if (c.algorithm != Algorithm::kHighThroughput) continue;
    ++high_throughput;
    EXPECT_EQ(c.layout, Layout::kExpertMajor);
  }
  EXPECT_EQ(high_throughput, 14u + 4u);
  auto parsed = ParseCases(SerializeCases(cases));
  ASSERT_TRUE(parsed.ok());
  ASSERT_EQ(parsed->size(), cases.size());
  EXPECT_EQ((*parsed)[5].Label(), cases[5].Label());
  EXPECT_EQ((*parsed)[5].index, 5);
}

TEST(CasesTest, AutoResolvesPerCaseByTokens) {
  CaseListOptions options;
  options.tokens = {128, 4096};
  options.routings = {RoutingKind::kRandom};
  options.auto_algorithm = true;
  const std::vector<Case> cases = BuildCases(options);
  ASSERT_EQ(cases.size(), 2u);
  EXPECT_EQ(cases[0].algorithm, Algorithm::kLowLatency);
  EXPECT_EQ(cases[1].algorithm, Algorithm::kHighThroughput);
}

}  // namespace
}  // namespace epd::bench
