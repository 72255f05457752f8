// A group spanning 2 and 3 cpu daemons on loopback gives, on every rank, the same receive
// buffers and combine output, byte for byte, as one daemon hosting all R ranks: both
// low-latency layouts, several dtypes, fp8 dispatch, varying token counts; and the
// high-throughput table (token counts, routings, recv_capacity overflow, fp8 dispatch).
#include <gtest/gtest.h>

#include <functional>
#include <iterator>
#include <tuple>

#include "tests/integration/high_throughput_table.h"
#include "tests/integration/multinode_support.h"

namespace epd::testing {
namespace {

using example::Problem;

// Rank r's inputs of layer `layer`.
using LayerInputs =
    std::function<example::RankInputs(const Problem& p, int rank, int layer)>;

// Token counts varying in [1, T] (example::TokensFor), exact (dyadic) weights.
example::RankInputs VaryingInputs(const Problem& p, int rank, int layer) {
  return example::MakeInputs(p, 29, rank, layer, example::TokensFor(p, rank, layer), true);
}

// Runs `layers` layers on every rank (ranks call in parallel; odd layers fenced, even ones
// blocking), each checked against the expected combine, and returns each layer's snapshot
// per rank.
StatusOr<std::vector<std::vector<std::vector<uint8_t>>>> RunLayers(std::vector<RankClient>& ranks,
                                                                   int layers,
                                                                   const LayerInputs& inputs) {
  std::vector<std::vector<std::vector<uint8_t>>> snapshots(layers,
                                                           std::vector<std::vector<uint8_t>>(ranks.size()));
  for (int layer = 0; layer < layers; ++layer) {
    const std::vector<Status> statuses = RunOnRanks(static_cast<int>(ranks.size()), [&](int r) {
      example::RankRunner& runner = *ranks[r].runner;
      const example::RankInputs in = inputs(runner.problem(), r, layer);
      Status status = runner.RunAndCheck(in, example::ScaleByExpertPlusOne, layer % 2 == 1);
      if (status.ok()) snapshots[layer][r] = Snapshot(runner, in.num_tokens, HostCopy);
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

// The layers on one daemon hosting all R ranks and on a group spanning the cluster's daemons
// give every rank the same snapshot, byte for byte.
void ExpectSpanningMatchesOneDaemon(DaemonProcess& single, LoopbackCluster& cluster,
                                    const Problem& p, int layers, const LayerInputs& inputs) {
  example::RankRunnerOptions options;
  options.group = UniqueName("one");
  auto alone = MakeRanks(single.address(), p, options);
  ASSERT_TRUE(alone.ok()) << alone.status().ToString();
  auto expected = RunLayers(*alone, layers, inputs);
  ASSERT_TRUE(expected.ok()) << expected.status().ToString();

  Problem spanning = p;
  spanning.spans_nodes = true;
  options.group = UniqueName("span");
  auto world = MakeSpanningRanks(cluster, spanning, options);
  ASSERT_TRUE(world.ok()) << world.status().ToString();
  auto got = RunLayers(*world, layers, inputs);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  for (size_t layer = 0; layer < got->size(); ++layer) {
    for (int r = 0; r < p.ranks; ++r) {
      EXPECT_EQ((*got)[layer][r], (*expected)[layer][r]) << "layer " << layer << " rank " << r;
    }
  }
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
  ExpectSpanningMatchesOneDaemon(*single_, *clusters_[nodes], p, 3, VaryingInputs);
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

// A high-throughput problem over `nodes` nodes; fp8: 0 none, 1 the daemon quantizes, 2 the
// frontend passes pre-quantized x and scales.
Problem HighThroughputProblem(int nodes, int fp8, v1::ScaleFormat scales) {
  Problem p;
  p.ranks = nodes * kRanksPerNode;
  p.experts = 2 * p.ranks;
  p.hidden = fp8 ? 256 : 64;
  p.max_tokens = 8;
  p.top_k = 3;
  p.algorithm = v1::ALGORITHM_HIGH_THROUGHPUT;
  p.fp8 = fp8 != 0;
  p.prequantized = fp8 == 2;
  p.scale_format = scales;
  return p;
}

// Every case of the high-throughput table (high_throughput_table.h), a layer each, on one
// daemon and on a group spanning `nodes` daemons with the same R: each rank's combine is the
// expected one, and its packed layout and combine output are the one daemon's, byte for byte.
void ExpectHighThroughputTableMatches(DaemonProcess& single, LoopbackCluster& cluster, int nodes,
                                      int fp8, v1::ScaleFormat scales) {
  auto table = [](const Problem& p, int rank, int layer) {
    const int rotation = layer % kHtRotations;
    return HtTableInputs(p, rank, layer, HtTableTokens(p, rank, rotation),
                         kHtRoutings[layer / kHtRotations]);
  };
  ExpectSpanningMatchesOneDaemon(single, cluster, HighThroughputProblem(nodes, fp8, scales),
                                 static_cast<int>(std::size(kHtRoutings)) * kHtRotations, table);
}

TEST_F(SpanningLayoutTest, HighThroughputTableMatchesOneDaemonOnTwoNodes) {
  ExpectHighThroughputTableMatches(*single_, *clusters_[2], 2, 0, v1::SCALE_FORMAT_FP32);
}
TEST_F(SpanningLayoutTest, HighThroughputTableMatchesOneDaemonOnThreeNodes) {
  ExpectHighThroughputTableMatches(*single_, *clusters_[3], 3, 0, v1::SCALE_FORMAT_FP32);
}
TEST_F(SpanningLayoutTest, HighThroughputFp8TableMatchesOneDaemonOnTwoNodes) {
  ExpectHighThroughputTableMatches(*single_, *clusters_[2], 2, 1, v1::SCALE_FORMAT_FP32);
}
TEST_F(SpanningLayoutTest, HighThroughputPrequantizedFp8TableMatchesOneDaemonOnThreeNodes) {
  ExpectHighThroughputTableMatches(*single_, *clusters_[3], 3, 2, v1::SCALE_FORMAT_UE8M0);
}

// recv_capacity overflow on a spanning group is the one daemon's error on every rank of every
// node (the rows are counted from the exchanged headers); the combine after it fails, and a
// layer within capacity works again.
TEST_F(SpanningLayoutTest, HighThroughputOverflowIsTheOneDaemonErrorOnEveryNode) {
  Problem p = HighThroughputProblem(2, 0, v1::SCALE_FORMAT_FP32);
  p.recv_capacity = p.max_tokens;  // rank 0 receives every rank's tokens under a hot expert
  example::RankRunnerOptions options;
  options.group = UniqueName("ht-one-full");
  const std::string alone_group = options.group;
  auto alone = MakeRanks(single_->address(), p, options);
  ASSERT_TRUE(alone.ok()) << alone.status().ToString();
  Problem spanning = p;
  spanning.spans_nodes = true;
  options.group = UniqueName("ht-span-full");
  const std::string spanning_group = options.group;
  auto world = MakeSpanningRanks(*clusters_[2], spanning, options);
  ASSERT_TRUE(world.ok()) << world.status().ToString();

  auto overflow = [&](std::vector<RankClient>& ranks) {
    return RunOnRanks(p.ranks, [&](int r) -> Status {
      example::RankRunner& runner = *ranks[r].runner;
      const int n = p.max_tokens;
      EPD_RETURN_IF_ERROR(runner.Stage(HtTableInputs(p, r, 0, n, HtRouting::kHotExpert)));
      EPD_RETURN_IF_ERROR(runner.session().Update(runner.handle_id(), runner.topk_ref(n),
                                                  runner.weights_ref(n), BlockingOptions()));
      return runner.session().Dispatch(runner.handle_id(), runner.x_ref(n), BlockingOptions());
    });
  };
  const std::vector<Status> expected = overflow(*alone);
  const std::vector<Status> got = overflow(*world);
  const std::string rows = fmt::format("{} rows", p.ranks * p.max_tokens);
  const std::string capacity = fmt::format("recv_capacity={}", p.max_tokens);
  for (int r = 0; r < p.ranks; ++r) {
    EXPECT_EPD_ERROR(got[r], StatusCode::kResourceExhausted, "group rank 0", rows, capacity);
    std::string message = got[r].message();
    message.replace(message.find(spanning_group), spanning_group.size(), alone_group);
    EXPECT_EQ(message, expected[r].message()) << "rank " << r;
  }
  const std::vector<Status> combined = RunOnRanks(p.ranks, [&](int r) -> Status {
    example::RankRunner& runner = *(*world)[r].runner;
    return runner.session().Combine(runner.handle_id(), runner.out_ref(p.max_tokens),
                                    std::nullopt, BlockingOptions());
  });
  for (const Status& status : combined) {
    EXPECT_EQ(status.code(), StatusCode::kFailedPrecondition) << status.ToString();
  }
  const std::vector<Status> again = RunOnRanks(p.ranks, [&](int r) {
    return (*world)[r].runner->RunAndCheck(HtTableInputs(p, r, 1, 1, HtRouting::kRandom),
                                           example::ScaleByExpertPlusOne, false);
  });
  for (const Status& status : again) EXPECT_TRUE(status.ok()) << status.ToString();
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
