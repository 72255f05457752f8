// A group spanning 2 and 3 cpu daemons on loopback gives, on every rank, the same receive
// buffers and combine output, byte for byte, as one daemon hosting all R ranks: both layouts,
// several dtypes, fp8 dispatch, varying token counts.
#include <gtest/gtest.h>

#include <tuple>

#include "tests/integration/multinode_support.h"

namespace epd::testing {
namespace {

using example::Problem;

// Runs `layers` layers on every rank (ranks call in parallel) and returns each layer's
// snapshot per rank.
StatusOr<std::vector<std::vector<std::vector<uint8_t>>>> RunLayers(std::vector<RankClient>& ranks,
                                                                   int layers) {
  std::vector<std::vector<std::vector<uint8_t>>> snapshots(layers,
                                                           std::vector<std::vector<uint8_t>>(ranks.size()));
  for (int layer = 0; layer < layers; ++layer) {
    const std::vector<Status> statuses = RunOnRanks(static_cast<int>(ranks.size()), [&](int r) {
      example::RankRunner& runner = *ranks[r].runner;
      const int n = example::TokensFor(runner.problem(), r, layer);
      const auto in = example::MakeInputs(runner.problem(), 29, r, layer, n, true);
      Status status = runner.RunAndCheck(in, example::ScaleByExpertPlusOne, layer == 1);
      if (status.ok()) snapshots[layer][r] = Snapshot(runner, n, HostCopy);
      return status.WithContext(fmt::format("rank {} layer {}", r, layer));
    });
    // Every rank's failure: the first one alone may only say a peer went missing.
    std::string failures;
    for (const Status& status : statuses) {
      if (!status.ok()) failures += "\n  " + status.ToString();
    }
    if (!failures.empty()) return InternalError("layer {} failed on:{}", layer, failures);
  }
  return snapshots;
}

class SpanningLayoutTest
    : public ::testing::TestWithParam<std::tuple<int, v1::Layout, v1::DType, int>> {
 protected:
  static void SetUpTestSuite() {
    auto single = DaemonProcess::Start({}, 3 * kRanksPerNode);
    ASSERT_TRUE(single.ok()) << single.status().ToString();
    single_ = std::move(single).value();
    for (int nodes : {2, 3}) {
      auto cluster = LoopbackCluster::Create(nodes);
      ASSERT_TRUE(cluster.ok()) << cluster.status().ToString();
      ASSERT_TRUE((*cluster)->StartAll().ok());
      clusters_[nodes] = std::move(cluster).value();
    }
  }
  static void TearDownTestSuite() {
    for (auto& cluster : clusters_) cluster.reset();
    single_.reset();
  }
  static std::unique_ptr<DaemonProcess> single_;
  static std::unique_ptr<LoopbackCluster> clusters_[4];
};
std::unique_ptr<DaemonProcess> SpanningLayoutTest::single_;
std::unique_ptr<LoopbackCluster> SpanningLayoutTest::clusters_[4];

TEST_P(SpanningLayoutTest, MatchesOneDaemonByteForByte) {
  // fp8: 0 none, 1 the daemon quantizes, 2 the frontend passes pre-quantized x and scales.
  const auto [nodes, layout, dtype, fp8] = GetParam();
  Problem p;
  p.ranks = nodes * kRanksPerNode;
  p.experts = 2 * p.ranks;
  p.hidden = fp8 ? 128 : 64;
  p.max_tokens = 8;
  p.top_k = 3;
  p.dtype = dtype;
  p.layout = layout;
  p.fp8 = fp8 != 0;
  p.prequantized = fp8 == 2;
  example::RankRunnerOptions options;
  options.group = UniqueName("one");
  auto alone = MakeRanks(single_->address(), p, options);
  ASSERT_TRUE(alone.ok()) << alone.status().ToString();
  auto expected = RunLayers(*alone, 3);
  ASSERT_TRUE(expected.ok()) << expected.status().ToString();

  Problem spanning = p;
  spanning.spans_nodes = true;
  options.group = UniqueName("span");
  auto world = MakeSpanningRanks(*clusters_[nodes], spanning, options);
  ASSERT_TRUE(world.ok()) << world.status().ToString();
  auto got = RunLayers(*world, 3);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  for (size_t layer = 0; layer < got->size(); ++layer) {
    for (int r = 0; r < p.ranks; ++r) {
      EXPECT_EQ((*got)[layer][r], (*expected)[layer][r]) << "layer " << layer << " rank " << r;
    }
  }
}

// Capacity is checked on the exchanged counts: every rank of every node reports the same
// overflow, and nobody waits for payload that is never sent.
TEST_F(SpanningLayoutTest, CapacityOverflowIsReportedOnEveryNode) {
  Problem p = SpanningProblem(2);
  p.expert_capacity = 1;
  example::RankRunnerOptions options;
  options.group = UniqueName("full");
  auto world = MakeSpanningRanks(*clusters_[2], p, options);
  ASSERT_TRUE(world.ok()) << world.status().ToString();
  for (int layer = 0; layer < 2; ++layer) {
    const std::vector<Status> statuses = RunOnRanks(p.ranks, [&](int r) {
      example::RankRunner& runner = *(*world)[r].runner;
      const auto in = example::MakeInputs(p, 3, r, layer, p.max_tokens, true);
      return runner.RunLayer(in, example::Identity, false);
    });
    for (const Status& status : statuses) {
      EXPECT_EPD_ERROR(status, StatusCode::kResourceExhausted, "expert_capacity=1");
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Table, SpanningLayoutTest,
    ::testing::Values(std::make_tuple(2, v1::LAYOUT_EXPERT_MAJOR, v1::DTYPE_BF16, 0),
                      std::make_tuple(2, v1::LAYOUT_RANK_MAJOR, v1::DTYPE_BF16, 0),
                      std::make_tuple(2, v1::LAYOUT_EXPERT_MAJOR, v1::DTYPE_BF16, 1),
                      std::make_tuple(3, v1::LAYOUT_RANK_MAJOR, v1::DTYPE_BF16, 2),
                      std::make_tuple(3, v1::LAYOUT_EXPERT_MAJOR, v1::DTYPE_FP32, 0),
                      std::make_tuple(3, v1::LAYOUT_RANK_MAJOR, v1::DTYPE_FP16, 0)),
    [](const auto& info) {
      return fmt::format("{}nodes_{}_{}{}", std::get<0>(info.param),
                         std::get<1>(info.param) == v1::LAYOUT_RANK_MAJOR ? "rank_major"
                                                                          : "expert_major",
                         v1::DType_Name(std::get<2>(info.param)),
                         std::get<3>(info.param) == 0   ? ""
                         : std::get<3>(info.param) == 1 ? "_fp8"
                                                        : "_fp8_prequantized");
    });

}  // namespace
}  // namespace epd::testing
