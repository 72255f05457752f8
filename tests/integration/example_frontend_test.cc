// Runs the example frontend (R processes, one per rank: dispatch -> scale-by-(e+1) expert ->
// combine, random weights, blocking and fenced layers, every element checked bit for bit)
// against a real daemon, for R in {1, 2, 4, 8}, both layouts and all token dtypes.
#include <gtest/gtest.h>

#include <tuple>

#include "tests/integration/client_test_support.h"

namespace epd::testing {
namespace {

class ExampleFrontendTest
    : public ::testing::TestWithParam<std::tuple<int, std::string, std::string>> {
 protected:
  static void SetUpTestSuite() {
    auto daemon = DaemonProcess::Start({}, 8);
    ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
    daemon_ = std::move(daemon).value();
  }
  static void TearDownTestSuite() { daemon_.reset(); }
  static std::unique_ptr<DaemonProcess> daemon_;
};
std::unique_ptr<DaemonProcess> ExampleFrontendTest::daemon_;

TEST_P(ExampleFrontendTest, AllRanksBitExact) {
  const auto [ranks, layout, dtype] = GetParam();
  auto child = ChildProcess::Spawn({ExampleFrontendPath(), "--address", daemon_->address(),
                                    "--ranks", std::to_string(ranks), "--layout", layout, "--dtype",
                                    dtype, "--tokens", "16", "--hidden", "64", "--iterations", "4",
                                    "--idx", ranks % 2 == 0 ? "int64" : "int32"});
  ASSERT_TRUE(child.ok()) << child.status().ToString();
  std::string output;
  while (true) {
    auto line = (*child)->ReadLine(60'000);
    if (!line.ok()) break;  // EOF: every process of the example exited
    output += *line + "\n";
  }
  EXPECT_EQ((*child)->Wait(10'000), 0) << output << "daemon log: " << daemon_->ReadLog();
  EXPECT_NE(output.find("all ranks OK"), std::string::npos) << output;
}

INSTANTIATE_TEST_SUITE_P(AllShapes, ExampleFrontendTest,
                         ::testing::Combine(::testing::Values(1, 2, 4, 8),
                                            ::testing::Values("expert_major", "rank_major"),
                                            ::testing::Values("bf16", "fp16", "fp32")),
                         [](const auto& info) {
                           return fmt::format("R{}_{}_{}", std::get<0>(info.param),
                                              std::get<1>(info.param), std::get<2>(info.param));
                         });

}  // namespace
}  // namespace epd::testing
