// FP8 dispatch through the real daemon (cpu backend): for both layouts x both scale formats x
// (daemon quantizes bf16 x | frontend passes e4m3 x + x_scales), every rank's received e4m3 rows
// and scales equal its own quantization of the source token (common/fp8.h), and the layer's
// combine output — experts reading the dequantized rows, writing bf16 expert_out — matches the
// frontend's computation bit for bit, for n in {0, 1, T-1, T}, all -1 routing and a hot expert.
// Bad fp8 requests are rejected naming the field.
#include <gtest/gtest.h>

#include <cstring>
#include <tuple>

#include "tests/integration/client_test_support.h"

namespace epd::testing {
namespace {

using example::Problem;
using example::RankInputs;

constexpr int kRanks = 2;

Problem Fp8Problem(v1::Layout layout, v1::ScaleFormat format, bool prequantized) {
  Problem p;
  p.ranks = kRanks;
  p.experts = 8;
  p.hidden = 256;  // two scale blocks
  p.max_tokens = 6;
  p.top_k = 3;
  p.dtype = v1::DTYPE_BF16;
  p.layout = layout;
  p.fp8 = true;
  p.scale_format = format;
  p.prequantized = prequantized;
  return p;
}

// Inputs whose values span blocks of very different magnitude (so scales differ per block),
// with a NaN, an infinity and a zero block on some tokens.
RankInputs Fp8Inputs(const Problem& p, int rank, int iteration, int n) {
  RankInputs in = example::MakeInputs(p, 11, rank, iteration, n, /*dyadic_weights=*/false);
  for (int t = 0; t < n; ++t) {
    uint8_t* row = in.x.data() + t * p.row_bytes();
    for (int h = 0; h < p.hidden; ++h) {
      const float v = LoadAsFloat(row, DType::kBf16, h);
      const float magnitude = h < 128 ? 300.0f * (t + 1) : 0.01f * (rank + 1);
      StoreFromFloat(row, DType::kBf16, h, v * magnitude);
    }
    if (t == 1) std::memset(row + 128 * 2, 0, 128 * 2);  // a zero block
  }
  return in;
}

void RouteAllToNothing(RankInputs& in) { std::fill(in.topk_idx.begin(), in.topk_idx.end(), -1); }

// Every token's k = 0 selects expert `hot`; later k that also chose it select nothing.
void RouteToHotExpert(const Problem& p, RankInputs& in, int hot) {
  for (int t = 0; t < in.num_tokens; ++t) {
    int32_t* idx = &in.topk_idx[static_cast<size_t>(t) * p.top_k];
    for (int k = 1; k < p.top_k; ++k) {
      if (idx[k] == hot) idx[k] = -1;
    }
    idx[0] = hot;
  }
}

// Received rows of rank d against the frontend-side quantization of every rank's inputs.
Status CheckReceivedRows(const Problem& p, int d, const std::vector<RankInputs>& in,
                         const HandleView& view) {
  std::vector<std::vector<uint8_t>> q(p.ranks), scales(p.ranks);
  for (int s = 0; s < p.ranks; ++s) example::QuantizeInputs(p, in[s], &q[s], &scales[s]);
  const size_t sb = p.scale_row_bytes();
  auto same = [&](int64_t row, int s, int t) -> Status {
    if (std::memcmp(view.recv_row(row), q[s].data() + static_cast<size_t>(t) * p.hidden,
                    p.hidden) != 0) {
      return InternalError("rank {} row {}: e4m3 bytes differ from token {} of rank {}", d, row, t,
                           s);
    }
    if (std::memcmp(view.recv_scales_row(row), scales[s].data() + t * sb, sb) != 0) {
      return InternalError("rank {} row {}: scales differ from token {} of rank {}", d, row, t, s);
    }
    return OkStatus();
  };
  if (p.expert_major()) {
    for (int l = 0; l < p.local_experts(); ++l) {
      const int32_t first = view.recv_offsets()[l];
      for (int32_t row = first; row < first + view.recv_counts()[l]; ++row) {
        const int32_t* src = view.recv_src() + 3 * row;
        EPD_RETURN_IF_ERROR(same(row, src[0], src[1]));
      }
    }
    return OkStatus();
  }
  for (int s = 0; s < p.ranks; ++s) {
    for (int t = 0; t < p.max_tokens; ++t) {
      const int64_t row = static_cast<int64_t>(s) * p.max_tokens + t;
      bool present = false;
      for (int k = 0; k < p.top_k; ++k)
        present = present || view.recv_topk_idx()[row * p.top_k + k] >= 0;
      if (present) {
        EPD_RETURN_IF_ERROR(same(row, s, t));
        continue;
      }
      const auto* x = static_cast<const uint8_t*>(view.recv_row(row));
      const auto* sc = static_cast<const uint8_t*>(view.recv_scales_row(row));
      for (int h = 0; h < p.hidden; ++h) {
        if (x[h] != 0) return InternalError("rank {} absent row {}: recv_x[{}] != 0", d, row, h);
      }
      for (size_t b = 0; b < sb; ++b) {
        if (sc[b] != 0)
          return InternalError("rank {} absent row {}: scale byte {} != 0", d, row, b);
      }
    }
  }
  return OkStatus();
}

// One daemon per suite; each test makes its ranks (a fresh group) for its problem.
template <typename Base>
class Fp8Suite : public Base {
 protected:
  static void SetUpTestSuite() {
    auto daemon = DaemonProcess::Start({}, kRanks);
    ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
    daemon_ = std::move(daemon).value();
  }
  static void TearDownTestSuite() { daemon_.reset(); }

  void MakeWorld(const Problem& problem, std::string_view prefix) {
    problem_ = problem;
    example::RankRunnerOptions options;
    options.group = UniqueName(prefix);
    auto world = MakeRanks(daemon_->address(), problem_, options);
    ASSERT_TRUE(world.ok()) << world.status().ToString();
    world_ = std::move(world).value();
  }

  static std::unique_ptr<DaemonProcess> daemon_;
  Problem problem_;
  std::vector<RankClient> world_;
};
template <typename Base>
std::unique_ptr<DaemonProcess> Fp8Suite<Base>::daemon_;

class Fp8DispatchTest
    : public Fp8Suite<::testing::TestWithParam<std::tuple<v1::Layout, v1::ScaleFormat, bool>>> {
 protected:
  void SetUp() override {
    const auto [layout, format, prequantized] = GetParam();
    MakeWorld(Fp8Problem(layout, format, prequantized), "fp8");
  }

  // One layer on both ranks with these inputs; checks outputs and received rows.
  Status Layer(const std::vector<RankInputs>& in, bool fenced) {
    const std::vector<Status> statuses = RunOnRanks(kRanks, [&](int r) {
      return world_[r].runner->RunAndCheck(in[r], example::ScaleByExpertPlusOne, fenced);
    });
    for (const Status& status : statuses) EPD_RETURN_IF_ERROR(status);
    for (int d = 0; d < kRanks; ++d) {
      EPD_RETURN_IF_ERROR(CheckReceivedRows(problem_, d, in, world_[d].runner->view()));
    }
    return OkStatus();
  }
};

TEST_P(Fp8DispatchTest, TokenCountsZeroOneTMinusOneAndT) {
  const int T = problem_.max_tokens;
  const int counts[4] = {0, 1, T - 1, T};
  for (int it = 0; it < 4; ++it) {
    std::vector<RankInputs> in;
    for (int r = 0; r < kRanks; ++r) in.push_back(Fp8Inputs(problem_, r, it, counts[(it + r) % 4]));
    ASSERT_EPD_OK(Layer(in, /*fenced=*/it % 2 == 1).WithContext(fmt::format("iteration {}", it)));
  }
}

TEST_P(Fp8DispatchTest, AllMinusOneRouting) {
  std::vector<RankInputs> in;
  for (int r = 0; r < kRanks; ++r) {
    in.push_back(Fp8Inputs(problem_, r, 5, problem_.max_tokens));
    RouteAllToNothing(in.back());
  }
  ASSERT_EPD_OK(Layer(in, false));
}

TEST_P(Fp8DispatchTest, HotExpert) {
  std::vector<RankInputs> in;
  for (int r = 0; r < kRanks; ++r) {
    in.push_back(Fp8Inputs(problem_, r, 6, problem_.max_tokens));
    RouteToHotExpert(problem_, in.back(), /*hot=*/5);
  }
  ASSERT_EPD_OK(Layer(in, true));
}

INSTANTIATE_TEST_SUITE_P(
    LayoutsScalesAndInputs, Fp8DispatchTest,
    ::testing::Combine(::testing::Values(v1::LAYOUT_EXPERT_MAJOR, v1::LAYOUT_RANK_MAJOR),
                       ::testing::Values(v1::SCALE_FORMAT_FP32, v1::SCALE_FORMAT_UE8M0),
                       ::testing::Bool()),
    [](const auto& info) {
      return fmt::format(
          "{}_{}_{}",
          std::get<0>(info.param) == v1::LAYOUT_RANK_MAJOR ? "RankMajor" : "ExpertMajor",
          std::get<1>(info.param) == v1::SCALE_FORMAT_UE8M0 ? "Ue8m0" : "Fp32",
          std::get<2>(info.param) ? "Prequantized" : "DaemonQuantized");
    });

// ---------------------------------------------------------------- bad requests

class Fp8BadInputTest : public Fp8Suite<::testing::Test> {
 protected:
  void SetUp() override {
    MakeWorld(Fp8Problem(v1::LAYOUT_EXPERT_MAJOR, v1::SCALE_FORMAT_UE8M0, true), "fp8bad");
    if (HasFatalFailure()) return;
    // Rank 0 binds routing for n tokens; its dispatches below are rejected before matching.
    RankInputs in = Fp8Inputs(problem_, 0, 0, n_);
    ASSERT_EPD_OK(rank0().Stage(in));
    ASSERT_EPD_OK(rank0().session().Update(rank0().handle_id(), rank0().topk_ref(n_),
                                           rank0().weights_ref(n_), BlockingOptions()));
  }

  example::RankRunner& rank0() { return *world_[0].runner; }
  Status Dispatch0(v1::DispatchRequest request) {
    auto answer = rank0().session().DispatchAsync(std::move(request));
    return rank0().session().Await(answer, "dispatch");
  }

  const int n_ = 4;
};

TEST_F(Fp8BadInputTest, PrequantizedXNeedsItsScales) {
  v1::DispatchRequest request = rank0().DispatchRequestFor(n_, BlockingOptions());
  request.clear_x_scales();
  EXPECT_EPD_ERROR(Dispatch0(request), StatusCode::kInvalidArgument, "x_scales is required",
                   "fp8_e4m3", "ue8m0");
}

TEST_F(Fp8BadInputTest, ScalesOfTheWrongFormatOrShapeAreNamed) {
  v1::DispatchRequest request = rank0().DispatchRequestFor(n_, BlockingOptions());
  request.mutable_x_scales()->set_dtype(v1::DTYPE_FP32);  // the group's scales are ue8m0
  EXPECT_EPD_ERROR(Dispatch0(request), StatusCode::kInvalidArgument,
                   "x_scales.dtype = fp32 does not match the expected uint8");
  request = rank0().DispatchRequestFor(n_, BlockingOptions());
  request.mutable_x_scales()->set_shape(1, 3);
  EXPECT_EPD_ERROR(Dispatch0(request), StatusCode::kInvalidArgument, "x_scales.shape[1] = 3",
                   "hidden / 128 = 2");
  request = rank0().DispatchRequestFor(n_, BlockingOptions());
  request.mutable_x_scales()->set_shape(0, n_ - 1);
  EXPECT_EPD_ERROR(Dispatch0(request), StatusCode::kInvalidArgument, "x_scales.shape[0] = 3");
}

TEST_F(Fp8BadInputTest, ScalesWithBf16XAreRejected) {
  v1::DispatchRequest request = rank0().DispatchRequestFor(n_, BlockingOptions());
  *request.mutable_x() = rank0().x_ref(n_);
  request.mutable_x()->set_offset_bytes(0);
  request.mutable_x()->set_dtype(v1::DTYPE_BF16);
  EXPECT_EPD_ERROR(Dispatch0(request), StatusCode::kInvalidArgument,
                   "x_scales is set, but x.dtype = bf16 is not pre-quantized fp8_e4m3");
  request.mutable_x()->set_dtype(v1::DTYPE_FP16);
  request.clear_x_scales();
  EXPECT_EPD_ERROR(Dispatch0(request), StatusCode::kInvalidArgument,
                   "x.dtype = fp16 does not match the expected bf16");
}

TEST_F(Fp8BadInputTest, CombineNeedsExpertOut) {
  EXPECT_EPD_ERROR(rank0().session().Combine(rank0().handle_id(), rank0().out_ref(n_), std::nullopt,
                                             BlockingOptions()),
                   StatusCode::kInvalidArgument, "expert_out is required", "fp8_e4m3");
  v1::TensorRef recv_x = rank0().view().RecvXRef();  // e4m3: not the token dtype
  EXPECT_EPD_ERROR(rank0().session().Combine(rank0().handle_id(), rank0().out_ref(n_), recv_x,
                                             BlockingOptions()),
                   StatusCode::kInvalidArgument,
                   "expert_out.dtype = fp8_e4m3 does not match the expected bf16");
}

TEST_F(Fp8BadInputTest, GroupsThatCannotQuantizeAreRejected) {
  Problem fp16 = problem_;
  fp16.dtype = v1::DTYPE_FP16;
  auto group = rank0().session().CreateGroup(fp16.Config(UniqueName("fp8fp16")), false);
  EXPECT_EPD_ERROR(group.status(), StatusCode::kInvalidArgument,
                   "dispatch_dtype=fp8_e4m3 quantizes bf16 tokens, but dtype=fp16");
  Problem narrow = problem_;
  narrow.hidden = 192;
  group = rank0().session().CreateGroup(narrow.Config(UniqueName("fp8narrow")), false);
  EXPECT_EPD_ERROR(group.status(), StatusCode::kInvalidArgument, "hidden=192", "multiple of 128");
}

}  // namespace
}  // namespace epd::testing
