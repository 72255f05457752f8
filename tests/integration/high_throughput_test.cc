// The high-throughput algorithm through the real daemon (docs/design.md §3): the packed
// receive layout checked element by element against a computation written here from the
// docs alone, the combine bit for bit against example::ExpectedOutput, and the row capacity
// (RESOURCE_EXHAUSTED naming rank, rows and capacity on every rank; a following combine fails).
// Table: token counts n in {0, 1, T-1, T} rotating over the ranks, routing with -1 entries,
// every selection -1, and one hot expert that every token selects; each on 2 and 4 ranks with
// the token dtype and with fp8 dispatch (both scale formats, quantized by the daemon or by the
// frontend): an fp8 row is the frontend's own quantization of the token (common/fp8.h) in
// recv_x and recv_scales, and the experts read it dequantized into expert_out.
#include <gtest/gtest.h>

#include <cstring>
#include <future>
#include <optional>
#include <ostream>

#include "tests/integration/client_test_support.h"
#include "tests/integration/high_throughput_table.h"

namespace epd::testing {
namespace {

using example::Problem;
using example::RankInputs;

// fp8: 0 none, 1 the daemon quantizes, 2 the frontend passes pre-quantized x and scales.
struct HtParam {
  int ranks = 2;
  int fp8 = 0;
  v1::ScaleFormat scales = v1::SCALE_FORMAT_FP32;
};

void PrintTo(const HtParam& p, std::ostream* os) {
  *os << "R" << p.ranks << " fp8 " << p.fp8 << " scales " << v1::ScaleFormat_Name(p.scales);
}

Problem HighThroughputProblem(const HtParam& param) {
  Problem p;
  p.ranks = param.ranks;
  p.experts = 2 * param.ranks;
  p.hidden = param.fp8 ? 384 : 64;  // fp8: three 128-channel blocks, an odd count
  p.max_tokens = 16;
  p.top_k = 3;
  p.dtype = v1::DTYPE_BF16;
  p.algorithm = v1::ALGORITHM_HIGH_THROUGHPUT;
  p.fp8 = param.fp8 != 0;
  p.prequantized = param.fp8 == 2;
  p.scale_format = param.scales;
  return p;
}

// Whether packed row `row` holds token t of source s: its bytes, or with fp8 the frontend's
// quantization of it (e4m3 row and scales).
Status CheckRowPayload(const Problem& p, const RankInputs& source, int s, int t, int64_t row,
                       const HandleView& view) {
  if (!p.fp8) {
    if (std::memcmp(view.recv_row(row), source.x.data() + t * p.row_bytes(), p.row_bytes()) != 0) {
      return InternalError("row {}: recv_x differs from token {} of rank {}", row, t, s);
    }
    return OkStatus();
  }
  std::vector<uint8_t> q, scales;
  example::QuantizeInputs(p, source, &q, &scales);
  if (std::memcmp(view.recv_row(row), q.data() + static_cast<size_t>(t) * p.hidden, p.hidden) !=
      0) {
    return InternalError("row {}: e4m3 bytes differ from token {} of rank {}", row, t, s);
  }
  const size_t sb = p.scale_row_bytes();
  if (std::memcmp(view.recv_scales_row(row), scales.data() + t * sb, sb) != 0) {
    return InternalError("row {}: scales differ from token {} of rank {}", row, t, s);
  }
  return OkStatus();
}

// The packed layout of rank d, from the docs: for s ascending, t ascending, one row when any
// of t's experts lives on d; local expert ids; the gather list per local expert.
Status CheckPacked(const Problem& p, int d, const std::vector<RankInputs>& in,
                   const HandleView& view) {
  const int K = p.top_k, L = p.local_experts();
  int32_t row = 0;
  std::vector<std::vector<int32_t>> rows_of_expert(L);
  for (int s = 0; s < p.ranks; ++s) {
    if (view.recv_rank_offsets()[s] != row) {
      return InternalError("recv_rank_offsets[{}] = {}, expected {}", s,
                           view.recv_rank_offsets()[s], row);
    }
    const int32_t first = row;
    for (int t = 0; t < in[s].num_tokens; ++t) {
      bool here = false;
      for (int k = 0; k < K; ++k) {
        const int32_t e = in[s].topk_idx[static_cast<size_t>(t) * K + k];
        here = here || (e >= 0 && p.rank_of(e) == d);
      }
      if (!here) continue;
      const int32_t* src = view.recv_src() + 2 * row;
      if (src[0] != s || src[1] != t) {
        return InternalError("row {}: recv_src = ({}, {}), expected ({}, {})", row, src[0],
                             src[1], s, t);
      }
      EPD_RETURN_IF_ERROR(CheckRowPayload(p, in[s], s, t, row, view));
      for (int k = 0; k < K; ++k) {
        const size_t i = static_cast<size_t>(t) * K + k;
        const int32_t e = in[s].topk_idx[i];
        const bool mine = e >= 0 && p.rank_of(e) == d;
        const int32_t expected_idx = mine ? e - d * L : -1;
        const float expected_w = mine ? in[s].weights[i] : 0.0f;
        if (view.recv_topk_idx()[row * K + k] != expected_idx ||
            view.recv_topk_weights()[row * K + k] != expected_w) {
          return InternalError("row {} k {}: local expert {} weight {}, expected {} weight {}",
                               row, k, view.recv_topk_idx()[row * K + k],
                               view.recv_topk_weights()[row * K + k], expected_idx, expected_w);
        }
        if (mine && (rows_of_expert[e - d * L].empty() || rows_of_expert[e - d * L].back() != row)) {
          rows_of_expert[e - d * L].push_back(row);
        }
      }
      ++row;
    }
    if (view.recv_rank_counts()[s] != row - first) {
      return InternalError("recv_rank_counts[{}] = {}, expected {}", s,
                           view.recv_rank_counts()[s], row - first);
    }
  }
  int32_t entry = 0;
  for (int l = 0; l < L; ++l) {
    const auto& rows = rows_of_expert[l];
    if (view.recv_offsets()[l] != entry ||
        view.recv_counts()[l] != static_cast<int32_t>(rows.size())) {
      return InternalError("expert {}: recv_offsets {} recv_counts {}, expected {} and {}", l,
                           view.recv_offsets()[l], view.recv_counts()[l], entry, rows.size());
    }
    for (int32_t r : rows) {
      if (view.expert_rows()[entry] != r) {
        return InternalError("expert_rows[{}] = {}, expected row {} (expert {})", entry,
                             view.expert_rows()[entry], r, l);
      }
      ++entry;
    }
  }
  if (view.recv_offsets()[L] != entry) {
    return InternalError("recv_offsets[{}] = {}, expected {}", L, view.recv_offsets()[L], entry);
  }
  return OkStatus();
}

class HighThroughputTest : public ::testing::TestWithParam<HtParam> {
 protected:
  static void SetUpTestSuite() {
    auto daemon = DaemonProcess::Start({}, 4);
    ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
    daemon_ = std::move(daemon).value();
  }
  static void TearDownTestSuite() { daemon_.reset(); }
  static std::unique_ptr<DaemonProcess> daemon_;
};
std::unique_ptr<DaemonProcess> HighThroughputTest::daemon_;

TEST_P(HighThroughputTest, TableCasesMatchTheLayoutAndCombineBitForBit) {
  const Problem p = HighThroughputProblem(GetParam());
  example::RankRunnerOptions options;
  options.group = UniqueName("ht");
  auto world = MakeRanks(daemon_->address(), p, options);
  ASSERT_TRUE(world.ok()) << world.status().ToString();
  int iteration = 0;
  for (HtRouting routing : kHtRoutings) {
    for (int rotation = 0; rotation < kHtRotations; ++rotation, ++iteration) {
      std::vector<RankInputs> inputs;
      for (int s = 0; s < p.ranks; ++s) {
        inputs.push_back(
            HtTableInputs(p, s, iteration, HtTableTokens(p, s, rotation), routing));
      }
      const std::vector<Status> statuses = RunOnRanks(p.ranks, [&](int d) -> Status {
        example::RankRunner& runner = *(*world)[d].runner;
        Session& session = runner.session();
        const int n = inputs[d].num_tokens;
        EPD_RETURN_IF_ERROR(runner.Stage(inputs[d]));
        EPD_RETURN_IF_ERROR(session.Update(runner.handle_id(), runner.topk_ref(n),
                                           runner.weights_ref(n), BlockingOptions()));
        std::future<Status> dispatched =
            session.DispatchAsync(runner.DispatchRequestFor(n, BlockingOptions()));
        EPD_RETURN_IF_ERROR(session.Await(dispatched, "dispatch"));
        const std::string where =
            fmt::format("rank {} routing {} rotation {}", d, HtRoutingName(routing), rotation);
        EPD_RETURN_IF_ERROR(CheckPacked(p, d, inputs, runner.view()).WithContext(where));
        EPD_RETURN_IF_ERROR(runner.RunExpertsOnReceived(example::ScaleByExpertPlusOne));
        std::optional<v1::TensorRef> expert_out;
        if (p.fp8) expert_out = runner.expert_out_ref();
        EPD_RETURN_IF_ERROR(
            session.Combine(runner.handle_id(), runner.out_ref(n), expert_out, BlockingOptions()));
        const std::vector<uint8_t> expected =
            example::ExpectedOutput(p, inputs[d], example::ScaleByExpertPlusOne);
        const int64_t bad = example::FirstMismatch(p, n, runner.out(), expected.data());
        if (bad >= 0) {
          return InternalError("{}: {}", where,
                               example::DescribeElement(p, bad, runner.out(), expected.data()));
        }
        return OkStatus();
      });
      for (int r = 0; r < p.ranks; ++r) EXPECT_TRUE(statuses[r].ok()) << statuses[r].ToString();
    }
  }
}

TEST_P(HighThroughputTest, FencedLayersThroughTheRunnerMatchTheExpectedOutput) {
  const Problem p = HighThroughputProblem(GetParam());
  example::RankRunnerOptions options;
  options.group = UniqueName("ht-fenced");
  auto world = MakeRanks(daemon_->address(), p, options);
  ASSERT_TRUE(world.ok()) << world.status().ToString();
  for (int it = 0; it < 3; ++it) {
    const std::vector<Status> statuses = RunOnRanks(p.ranks, [&](int r) {
      const RankInputs in =
          example::MakeInputs(p, 3, r, it, example::TokensFor(p, r, it), /*dyadic=*/false);
      return (*world)[r].runner->RunAndCheck(in, example::ScaleByExpertPlusOne, it % 2 == 1);
    });
    for (const Status& status : statuses) EXPECT_TRUE(status.ok()) << status.ToString();
  }
}

TEST_P(HighThroughputTest, RowCapacityOverflowFailsEveryRankAndTheCombineAfterIt) {
  Problem p = HighThroughputProblem(GetParam());
  p.recv_capacity = p.max_tokens;  // rank 0 receives every rank's tokens under a hot expert
  example::RankRunnerOptions options;
  options.group = UniqueName("ht-capacity");
  auto world = MakeRanks(daemon_->address(), p, options);
  ASSERT_TRUE(world.ok()) << world.status().ToString();
  auto layer = [&](HtRouting routing, int n) {
    return RunOnRanks(p.ranks, [&](int r) -> Status {
      example::RankRunner& runner = *(*world)[r].runner;
      EPD_RETURN_IF_ERROR(runner.Stage(HtTableInputs(p, r, 0, n, routing)));
      EPD_RETURN_IF_ERROR(runner.session().Update(runner.handle_id(), runner.topk_ref(n),
                                                  runner.weights_ref(n), BlockingOptions()));
      std::future<Status> dispatched =
          runner.session().DispatchAsync(runner.DispatchRequestFor(n, BlockingOptions()));
      return runner.session().Await(dispatched, "dispatch");
    });
  };
  for (const Status& status : layer(HtRouting::kRandom, 1)) {
    ASSERT_TRUE(status.ok()) << status.ToString();
  }
  const std::string rows = fmt::format("{} rows", p.ranks * p.max_tokens);
  const std::string capacity = fmt::format("recv_capacity={}", p.max_tokens);
  for (const Status& status : layer(HtRouting::kHotExpert, p.max_tokens)) {
    EXPECT_EPD_ERROR(status, StatusCode::kResourceExhausted, "group rank 0", rows, capacity);
  }
  const std::vector<Status> combined = RunOnRanks(p.ranks, [&](int r) -> Status {
    example::RankRunner& runner = *(*world)[r].runner;
    std::optional<v1::TensorRef> expert_out;
    if (p.fp8) expert_out = runner.expert_out_ref();
    return runner.session().Combine(runner.handle_id(), runner.out_ref(p.max_tokens), expert_out,
                                    BlockingOptions());
  });
  for (const Status& status : combined) {
    EXPECT_EQ(status.code(), StatusCode::kFailedPrecondition) << status.ToString();
  }
  // Within capacity again: a whole layer works.
  const std::vector<Status> again = RunOnRanks(p.ranks, [&](int r) {
    return (*world)[r].runner->RunAndCheck(HtTableInputs(p, r, 1, 1, HtRouting::kRandom),
                                           example::Identity, false);
  });
  for (const Status& status : again) EXPECT_TRUE(status.ok()) << status.ToString();
}

INSTANTIATE_TEST_SUITE_P(
    Table, HighThroughputTest,
    ::testing::Values(HtParam{2}, HtParam{4}, HtParam{2, 1, v1::SCALE_FORMAT_FP32},
                      HtParam{2, 1, v1::SCALE_FORMAT_UE8M0}, HtParam{2, 2, v1::SCALE_FORMAT_FP32},
                      HtParam{2, 2, v1::SCALE_FORMAT_UE8M0}, HtParam{4, 1, v1::SCALE_FORMAT_UE8M0},
                      HtParam{4, 2, v1::SCALE_FORMAT_FP32}),
    [](const auto& info) {
      const HtParam& p = info.param;
      if (p.fp8 == 0) return fmt::format("R{}", p.ranks);
      return fmt::format("R{}_fp8_{}{}", p.ranks,
                         p.scales == v1::SCALE_FORMAT_UE8M0 ? "ue8m0" : "fp32",
                         p.fp8 == 2 ? "_prequantized" : "");
    });

}  // namespace
}  // namespace epd::testing
