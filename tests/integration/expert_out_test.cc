// Combine reading expert outputs from a separate frontend buffer (CombineRequest.expert_out)
// instead of the handle's recv_x: the frontend's experts write there and recv_x is scribbled
// over, so a combine that read recv_x would fail the bit-exact check.
#include <gtest/gtest.h>

#include <cstring>

#include "tests/integration/client_test_support.h"

namespace epd::testing {
namespace {

using example::Problem;

class ExpertOutTest : public ::testing::TestWithParam<v1::Layout> {};

TEST_P(ExpertOutTest, CombineReadsTheGivenExpertOutput) {
  auto daemon = DaemonProcess::Start({}, 2);
  ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
  Problem p;
  p.ranks = 2;
  p.experts = 4;
  p.hidden = 64;
  p.max_tokens = 16;
  p.top_k = 3;
  p.dtype = v1::DTYPE_FP16;
  p.layout = GetParam();
  example::RankRunnerOptions options;
  options.group = UniqueName("eo");
  auto world = MakeRanks((*daemon)->address(), p, options);
  ASSERT_TRUE(world.ok()) << world.status().ToString();

  const std::vector<Status> statuses = RunOnRanks(2, [&](int r) -> Status {
    example::RankRunner& runner = *(*world)[r].runner;
    Session& session = runner.session();
    HandleView& view = runner.view();
    const size_t bytes = static_cast<size_t>(view.recv_rows()) * view.row_bytes();
    EPD_ASSIGN_OR_RETURN(auto expert_out, SharedMemoryBuffer::Create(bytes));
    EPD_ASSIGN_OR_RETURN(const uint64_t expert_out_id,
                         session.RegisterBuffer(expert_out->Source()));
    const v1::TensorRef expert_out_ref =
        MakeTensorRef(expert_out_id, 0, p.dtype, {view.recv_rows(), p.hidden});
    for (int it = 0; it < 2; ++it) {
      const int n = example::TokensFor(p, r, it);
      const auto in = example::MakeInputs(p, 9, r, it, n, /*dyadic_weights=*/false);
      EPD_RETURN_IF_ERROR(runner.Stage(in));
      EPD_RETURN_IF_ERROR(session.Update(runner.handle_id(), runner.topk_ref(n),
                                         runner.weights_ref(n), BlockingOptions()));
      EPD_RETURN_IF_ERROR(session.Dispatch(runner.handle_id(), runner.x_ref(n), BlockingOptions()));
      example::RunExperts(p, r, view, example::ScaleByExpertPlusOne);
      std::memcpy(expert_out->data(), view.recv_x(), bytes);
      std::memset(view.recv_x(), 0x55, bytes);
      // A wrongly shaped expert_out is refused before anything runs.
      v1::TensorRef bad = expert_out_ref;
      bad.set_shape(0, view.recv_rows() - 1);
      const Status refused =
          session.Combine(runner.handle_id(), runner.out_ref(n), bad, BlockingOptions());
      if (refused.code() != StatusCode::kInvalidArgument ||
          refused.message().find("expert_out.shape[0]") == std::string::npos) {
        return InternalError("bad expert_out shape: unexpected {}", refused.ToString());
      }
      EPD_RETURN_IF_ERROR(session.Combine(runner.handle_id(), runner.out_ref(n), expert_out_ref,
                                          BlockingOptions()));
      const auto expected = example::ExpectedOutput(p, in, example::ScaleByExpertPlusOne);
      const int64_t bad_element = example::FirstMismatch(p, n, runner.out(), expected.data());
      if (bad_element >= 0) {
        return InternalError(
            "rank {} layer {}: {}", r, it,
            example::DescribeElement(p, bad_element, runner.out(), expected.data()));
      }
    }
    return OkStatus();
  });
  for (int r = 0; r < 2; ++r) EXPECT_TRUE(statuses[r].ok()) << statuses[r].ToString();
}

INSTANTIATE_TEST_SUITE_P(Layouts, ExpertOutTest,
                         ::testing::Values(v1::LAYOUT_EXPERT_MAJOR, v1::LAYOUT_RANK_MAJOR),
                         [](const auto& info) {
                           return std::string(info.param == v1::LAYOUT_RANK_MAJOR ? "RankMajor"
                                                                                  : "ExpertMajor");
                         });

}  // namespace
}  // namespace epd::testing
