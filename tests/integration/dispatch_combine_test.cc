// dispatch -> identity expert -> combine returns each token times the sum of its weights,
// bit-exact, for R in {1, 2, 4, 8}, both layouts, bf16/fp16/fp32.
// One client (connection + session) per rank, each on its own thread, against one daemon.
#include <gtest/gtest.h>

#include <tuple>

#include "tests/integration/client_test_support.h"

namespace epd::testing {
namespace {

using example::Problem;

class DispatchCombineTest
    : public ::testing::TestWithParam<std::tuple<int, v1::Layout, v1::DType>> {
 protected:
  static void SetUpTestSuite() {
    auto daemon = DaemonProcess::Start({}, 8);
    ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
    daemon_ = std::move(daemon).value();
  }
  static void TearDownTestSuite() { daemon_.reset(); }
  static std::unique_ptr<DaemonProcess> daemon_;
};
std::unique_ptr<DaemonProcess> DispatchCombineTest::daemon_;

// out[t] must be round(x[t] * sum of its valid weights); the weights are multiples of 1/8 and
// tokens multiples of 1/8, so the fp32 accumulation is exact whatever the order.
Status CheckTokenTimesWeightSum(const Problem& p, const example::RankInputs& in, const void* out) {
  const DType dtype = p.token_dtype();
  for (int t = 0; t < in.num_tokens; ++t) {
    float weight_sum = 0.0f;
    bool any = false;
    for (int k = 0; k < p.top_k; ++k) {
      if (in.topk_idx[static_cast<size_t>(t) * p.top_k + k] < 0) continue;
      weight_sum += in.weights[static_cast<size_t>(t) * p.top_k + k];
      any = true;
    }
    const auto* x_row = in.x.data() + t * p.row_bytes();
    const auto* out_row = static_cast<const uint8_t*>(out) + t * p.row_bytes();
    for (int h = 0; h < p.hidden; ++h) {
      uint32_t expected = 0, actual = 0;
      // No selected expert: nothing accumulates, +0 (never -0 from x * 0).
      StoreFromFloat(&expected, dtype, 0, any ? LoadAsFloat(x_row, dtype, h) * weight_sum : 0.0f);
      std::memcpy(&actual, out_row + h * DTypeSize(dtype), DTypeSize(dtype));
      if (actual != expected) {
        return InternalError("token {} element {}: got {:#x} ({}), expected {:#x} = {} * {}", t, h,
                             actual, LoadAsFloat(out_row, dtype, h), expected,
                             LoadAsFloat(x_row, dtype, h), weight_sum);
      }
    }
  }
  return OkStatus();
}

TEST_P(DispatchCombineTest, IdentityExpertReturnsTokenTimesWeightSum) {
  const auto [ranks, layout, dtype] = GetParam();
  Problem p;
  p.ranks = ranks;
  p.experts = ranks <= 2 ? 4 * ranks : 2 * ranks;
  p.hidden = 64;
  p.max_tokens = 16;
  p.top_k = std::min(p.experts, 2 + ranks / 4);  // 2, 2, 3, 4
  p.dtype = dtype;
  p.layout = layout;
  example::RankRunnerOptions options;
  options.group = UniqueName("dc");
  options.int64_topk = dtype == v1::DTYPE_FP16;  // both index dtypes get covered
  auto world = MakeRanks(daemon_->address(), p, options);
  ASSERT_TRUE(world.ok()) << world.status().ToString();

  const std::vector<Status> statuses = RunOnRanks(ranks, [&](int r) -> Status {
    example::RankRunner& runner = *(*world)[r].runner;
    // Full T, then varying n; blocking, fenced, blocking.
    for (int it = 0; it < 3; ++it) {
      const int n = example::TokensFor(p, r, it);
      const auto in = example::MakeInputs(p, 11, r, it, n, /*dyadic_weights=*/true);
      EPD_RETURN_IF_ERROR(runner.RunLayer(in, example::Identity, /*fenced=*/it == 1)
                              .WithContext(fmt::format("rank {} layer {}", r, it)));
      EPD_RETURN_IF_ERROR(CheckTokenTimesWeightSum(p, in, runner.out())
                              .WithContext(fmt::format("rank {} layer {} (n = {})", r, it, n)));
    }
    return OkStatus();
  });
  for (int r = 0; r < ranks; ++r) EXPECT_TRUE(statuses[r].ok()) << statuses[r].ToString();
}

std::string ParamName(
    const ::testing::TestParamInfo<std::tuple<int, v1::Layout, v1::DType>>& info) {
  const auto [ranks, layout, dtype] = info.param;
  return fmt::format("R{}_{}_{}", ranks,
                     layout == v1::LAYOUT_RANK_MAJOR ? "RankMajor" : "ExpertMajor",
                     dtype == v1::DTYPE_BF16   ? "bf16"
                     : dtype == v1::DTYPE_FP16 ? "fp16"
                                               : "fp32");
}

INSTANTIATE_TEST_SUITE_P(
    AllShapes, DispatchCombineTest,
    ::testing::Combine(::testing::Values(1, 2, 4, 8),
                       ::testing::Values(v1::LAYOUT_EXPERT_MAJOR, v1::LAYOUT_RANK_MAJOR),
                       ::testing::Values(v1::DTYPE_BF16, v1::DTYPE_FP16, v1::DTYPE_FP32)),
    ParamName);

}  // namespace
}  // namespace epd::testing
