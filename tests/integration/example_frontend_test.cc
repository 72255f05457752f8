// Runs the example frontend (R processes, one per rank: dispatch -> scale-by-(e+1) expert ->
// combine, random weights, blocking and fenced layers, every element checked bit for bit)
// against a real daemon, for R in {1, 2, 4, 8}, both layouts and all token dtypes, and with
// FP8 dispatch (both layouts, both scale formats, daemon- and frontend-side quantization).
#include <gtest/gtest.h>

#include <string>
#include <tuple>
#include <vector>

#include "tests/integration/client_test_support.h"

namespace epd::testing {
namespace {

// One 8-rank daemon per suite.
template <typename Param>
class WithDaemon : public ::testing::TestWithParam<Param> {
 protected:
  static void SetUpTestSuite() {
    auto daemon = DaemonProcess::Start({}, 8);
    ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
    daemon_ = std::move(daemon).value();
  }
  static void TearDownTestSuite() { daemon_.reset(); }
  static std::unique_ptr<DaemonProcess> daemon_;
};
template <typename Param>
std::unique_ptr<DaemonProcess> WithDaemon<Param>::daemon_;

class ExampleFrontendTest : public WithDaemon<std::tuple<int, std::string, std::string>> {};
class ExampleFrontendFp8Test : public WithDaemon<std::tuple<int, std::string>> {};
class ExampleFrontendHighThroughputTest : public WithDaemon<int> {};

// Runs the example with `args` after --address; expects exit 0 and "all ranks OK".
void ExpectExampleSucceeds(const DaemonProcess& daemon, std::vector<std::string> args) {
  args.insert(args.begin(), {ExampleFrontendPath(), "--address", daemon.address()});
  auto child = ChildProcess::Spawn(args);
  ASSERT_TRUE(child.ok()) << child.status().ToString();
  std::string output;
  while (true) {
    auto line = (*child)->ReadLine(60'000);
    if (!line.ok()) break;  // EOF: every process of the example exited
    output += *line + "\n";
  }
  EXPECT_EQ((*child)->Wait(10'000), 0) << output << "daemon log: " << daemon.ReadLog();
  EXPECT_NE(output.find("all ranks OK"), std::string::npos) << output;
}

TEST_P(ExampleFrontendTest, AllRanksBitExact) {
  const auto [ranks, layout, dtype] = GetParam();
  ExpectExampleSucceeds(*daemon_, {"--ranks", std::to_string(ranks), "--layout", layout,
                                   "--dtype", dtype, "--tokens", "16", "--hidden", "64",
                                   "--iterations", "4", "--idx", ranks % 2 == 0 ? "int64" : "int32"});
}

// FP8 dispatch of bf16 tokens: quantized by the daemon (expert-major) or by the frontend
// (rank-major), fp32 scales on odd R, ue8m0 on even R.
TEST_P(ExampleFrontendFp8Test, AllRanksBitExact) {
  const auto [ranks, layout] = GetParam();
  std::vector<std::string> args = {"--ranks", std::to_string(ranks), "--layout", layout,
                                   "--tokens", "8", "--hidden", "256", "--iterations", "4",
                                   "--dispatch-dtype", "fp8", "--scale-format",
                                   ranks % 2 == 0 ? "ue8m0" : "fp32"};
  if (layout == "rank_major") args.push_back("--prequantized");
  ExpectExampleSucceeds(*daemon_, args);
}

// The high-throughput algorithm from separate frontend processes, blocking and fenced.
TEST_P(ExampleFrontendHighThroughputTest, AllRanksBitExact) {
  const int ranks = GetParam();
  ExpectExampleSucceeds(*daemon_, {"--ranks", std::to_string(ranks), "--algorithm",
                                   "high_throughput", "--tokens", "16", "--hidden", "64",
                                   "--iterations", "4", "--dtype", ranks == 2 ? "bf16" : "fp32"});
}

INSTANTIATE_TEST_SUITE_P(HighThroughput, ExampleFrontendHighThroughputTest,
                         ::testing::Values(1, 2, 4),
                         [](const auto& info) { return fmt::format("R{}", info.param); });

INSTANTIATE_TEST_SUITE_P(AllShapes, ExampleFrontendTest,
                         ::testing::Combine(::testing::Values(1, 2, 4, 8),
                                            ::testing::Values("expert_major", "rank_major"),
                                            ::testing::Values("bf16", "fp16", "fp32")),
                         [](const auto& info) {
                           return fmt::format("R{}_{}_{}", std::get<0>(info.param),
                                              std::get<1>(info.param), std::get<2>(info.param));
                         });

INSTANTIATE_TEST_SUITE_P(Fp8, ExampleFrontendFp8Test,
                         ::testing::Combine(::testing::Values(1, 2, 4),
                                            ::testing::Values("expert_major", "rank_major")),
                         [](const auto& info) {
                           return fmt::format("R{}_{}", std::get<0>(info.param),
                                              std::get<1>(info.param));
                         });

}  // namespace
}  // namespace epd::testing
