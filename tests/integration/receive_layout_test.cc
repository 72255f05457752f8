// The receive buffers a dispatch leaves in each rank's handle, checked element by element
// against a computation written here from docs/design.md §3 alone:
//  - expert-major: expert l's rows packed at recv_offsets[l], ordered by (src rank, src token,
//    k), with recv_src = (s, t, k), recv_weights = w and the token's bytes;
//  - rank-major: row s*T+t holds token t of rank s when any of its experts lives here, else
//    zeros; per-row expert ids (-1 when not here) and weights (0); recv_counts[s] = n_s.
// The second layer uses fewer tokens so stale rows of the first would show.
#include <gtest/gtest.h>

#include <cstring>

#include "tests/integration/client_test_support.h"

namespace epd::testing {
namespace {

using example::Problem;
using example::RankInputs;

class ReceiveLayoutTest : public ::testing::TestWithParam<v1::Layout> {
 protected:
  static void SetUpTestSuite() {
    auto daemon = DaemonProcess::Start({}, 4);
    ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
    daemon_ = std::move(daemon).value();
  }
  static void TearDownTestSuite() { daemon_.reset(); }
  static std::unique_ptr<DaemonProcess> daemon_;
};
std::unique_ptr<DaemonProcess> ReceiveLayoutTest::daemon_;

Status CheckExpertMajor(const Problem& p, int d, const std::vector<RankInputs>& in,
                        const HandleView& view) {
  const int L = p.local_experts(), K = p.top_k;
  int32_t next_row = 0;
  for (int l = 0; l < L; ++l) {
    const int e = d * L + l;
    if (view.recv_offsets()[l] != next_row) {
      return InternalError("recv_offsets[{}] = {}, expected {}", l, view.recv_offsets()[l],
                           next_row);
    }
    int32_t row = next_row;
    for (int s = 0; s < p.ranks; ++s) {
      for (int t = 0; t < in[s].num_tokens; ++t) {
        for (int k = 0; k < K; ++k) {
          if (in[s].topk_idx[static_cast<size_t>(t) * K + k] != e) continue;
          const int32_t* src = view.recv_src() + 3 * row;
          if (src[0] != s || src[1] != t || src[2] != k) {
            return InternalError("expert {} row {}: recv_src = ({}, {}, {}), expected ({}, {}, {})",
                                 e, row, src[0], src[1], src[2], s, t, k);
          }
          if (view.recv_weights()[row] != in[s].weights[static_cast<size_t>(t) * K + k]) {
            return InternalError("expert {} row {}: recv_weights = {}, expected {}", e, row,
                                 view.recv_weights()[row],
                                 in[s].weights[static_cast<size_t>(t) * K + k]);
          }
          if (std::memcmp(view.recv_row(row), in[s].x.data() + t * p.row_bytes(), p.row_bytes()) !=
              0) {
            return InternalError("expert {} row {}: recv_x differs from token {} of rank {}", e,
                                 row, t, s);
          }
          ++row;
        }
      }
    }
    if (view.recv_counts()[l] != row - next_row) {
      return InternalError("recv_counts[{}] = {}, expected {}", l, view.recv_counts()[l],
                           row - next_row);
    }
    next_row = row;
  }
  return OkStatus();
}

Status CheckRankMajor(const Problem& p, int d, const std::vector<RankInputs>& in,
                      const HandleView& view) {
  const int K = p.top_k, T = p.max_tokens;
  const std::vector<uint8_t> zeros(p.row_bytes(), 0);
  for (int s = 0; s < p.ranks; ++s) {
    if (view.recv_counts()[s] != in[s].num_tokens) {
      return InternalError("recv_counts[{}] = {}, expected {}", s, view.recv_counts()[s],
                           in[s].num_tokens);
    }
    for (int t = 0; t < T; ++t) {
      const int64_t row = static_cast<int64_t>(s) * T + t;
      bool present = false;
      for (int k = 0; k < K; ++k) {
        int32_t expected_idx = -1;
        float expected_w = 0.0f;
        if (t < in[s].num_tokens) {
          const size_t i = static_cast<size_t>(t) * K + k;
          if (in[s].topk_idx[i] >= 0 && p.rank_of(in[s].topk_idx[i]) == d) {
            expected_idx = in[s].topk_idx[i];
            expected_w = in[s].weights[i];
            present = true;
          }
        }
        if (view.recv_topk_idx()[row * K + k] != expected_idx ||
            view.recv_topk_weights()[row * K + k] != expected_w) {
          return InternalError(
              "row {} (rank {}, token {}) k {}: expert {} weight {}, expected "
              "expert {} weight {}",
              row, s, t, k, view.recv_topk_idx()[row * K + k],
              view.recv_topk_weights()[row * K + k], expected_idx, expected_w);
        }
      }
      const void* expected = present ? in[s].x.data() + t * p.row_bytes() : zeros.data();
      if (std::memcmp(view.recv_row(row), expected, p.row_bytes()) != 0) {
        return InternalError("row {} (rank {}, token {}): recv_x differs from {}", row, s, t,
                             present ? "the token" : "zeros");
      }
    }
  }
  return OkStatus();
}

TEST_P(ReceiveLayoutTest, ReceivedRowsMatchIndependentComputation) {
  Problem p;
  p.ranks = 4;
  p.experts = 8;
  p.hidden = 64;
  p.max_tokens = 16;
  p.top_k = 3;
  p.dtype = v1::DTYPE_BF16;
  p.layout = GetParam();
  example::RankRunnerOptions options;
  options.group = UniqueName("layout");
  auto world = MakeRanks(daemon_->address(), p, options);
  ASSERT_TRUE(world.ok()) << world.status().ToString();

  for (int it = 0; it < 2; ++it) {
    std::vector<RankInputs> inputs;
    for (int s = 0; s < p.ranks; ++s) {
      const int n = it == 0 ? p.max_tokens : 3 + s;  // fewer tokens than the first layer
      inputs.push_back(example::MakeInputs(p, 5, s, it, n, /*dyadic_weights=*/false));
    }
    const std::vector<Status> statuses = RunOnRanks(p.ranks, [&](int d) -> Status {
      example::RankRunner& runner = *(*world)[d].runner;
      Session& session = runner.session();
      const int n = inputs[d].num_tokens;
      EPD_RETURN_IF_ERROR(runner.Stage(inputs[d]));
      EPD_RETURN_IF_ERROR(session.Update(runner.handle_id(), runner.topk_ref(n),
                                         runner.weights_ref(n), BlockingOptions()));
      EPD_RETURN_IF_ERROR(session.Dispatch(runner.handle_id(), runner.x_ref(n), BlockingOptions()));
      const Status layout = p.expert_major() ? CheckExpertMajor(p, d, inputs, runner.view())
                                             : CheckRankMajor(p, d, inputs, runner.view());
      EPD_RETURN_IF_ERROR(layout.WithContext(fmt::format("rank {} layer {}", d, it)));
      // Identity expert (rank-major: pre-reduce), then combine: the layer completes.
      example::RunExperts(p, d, runner.view(), example::Identity);
      return session.Combine(runner.handle_id(), runner.out_ref(n), std::nullopt,
                             BlockingOptions());
    });
    for (int r = 0; r < p.ranks; ++r) EXPECT_TRUE(statuses[r].ok()) << statuses[r].ToString();
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, ReceiveLayoutTest,
                         ::testing::Values(v1::LAYOUT_EXPERT_MAJOR, v1::LAYOUT_RANK_MAJOR),
                         [](const auto& info) {
                           return std::string(info.param == v1::LAYOUT_RANK_MAJOR ? "RankMajor"
                                                                                  : "ExpertMajor");
                         });

}  // namespace
}  // namespace epd::testing
