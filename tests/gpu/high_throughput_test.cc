// The high-throughput algorithm on the CUDA backend, bit for bit against the cpu reference
// (reference_high_throughput.cc): packed rows, their metadata, the gather list and the
// combine, for token counts 0, 1, T-1, T (RunRounds), every routing shape, on 1 and 2 GPUs
// (a rank per GPU) and on 2 and 4 ranks sharing GPUs; the row capacity overflow on every rank.
// FP8 dispatch (bf16 tokens quantized by the kernel once per token, or the frontend's e4m3 rows
// and scales copied) in both scale formats: recv_x and recv_scales in the packed row order.
#include <gtest/gtest.h>

#include <ostream>

#include "kernels/routing_scratch.h"
#include "tests/gpu/moe_harness.h"

namespace epd::gputest {
namespace {

struct HtCase {
  CaseSpec spec;
  RoutingKind routing = RoutingKind::kRandom;
};

void PrintTo(const HtCase& c, std::ostream* os) { *os << c.spec.name; }

CaseSpec HtSpec(std::string name, int ranks, int experts, int hidden, int tokens, int top_k,
                DType dtype = DType::kBf16) {
  CaseSpec s;
  s.name = std::move(name);
  s.ranks = ranks;
  s.experts = experts;
  s.hidden = hidden;
  s.tokens = tokens;
  s.top_k = top_k;
  s.dtype = dtype;
  s.algorithm = Algorithm::kHighThroughput;
  return s;
}

std::string RoutingName(RoutingKind kind) {
  switch (kind) {
    case RoutingKind::kRandom:
      return "Random";
    case RoutingKind::kSparse:
      return "Sparse";
    case RoutingKind::kAllAbsent:
      return "AllAbsent";
    default:
      return "HotExpert";
  }
}

CaseSpec Fp8(CaseSpec s, ScaleFormat format, bool prequantized) {
  s.name += std::string("_Fp8_") + std::string(ScaleFormatName(format)) +
            (prequantized ? "_prequantized" : "_quantized");
  s.dispatch_format = DispatchFormat::kFp8E4m3;
  s.scale_format = format;
  s.prequantized = prequantized;
  return s;
}

// The fp8 table on `ranks` ranks: both scale formats x (kernel quantizes | frontend
// pre-quantized) on sparse and hot-expert routing, H = 640 (5 blocks: a half warp idles in the
// last step), every selection -1, one block striding over everything, the standard shape.
void AddFp8Cases(std::vector<HtCase>& cases, int ranks, const std::string& r) {
  for (ScaleFormat format : {ScaleFormat::kFp32, ScaleFormat::kUe8m0}) {
    for (bool prequantized : {false, true}) {
      for (RoutingKind routing : {RoutingKind::kSparse, RoutingKind::kHotExpert}) {
        cases.push_back(
            {Fp8(HtSpec(RoutingName(routing) + r, ranks, 16, 640, 24, 4), format, prequantized),
             routing});
      }
    }
  }
  cases.push_back({Fp8(HtSpec("AllAbsent" + r, ranks, 16, 640, 24, 4), ScaleFormat::kFp32, false),
                   RoutingKind::kAllAbsent});
  HtCase one_block{Fp8(HtSpec("OneBlock" + r, ranks, 16, 2048, 48, 4), ScaleFormat::kUe8m0, false),
                   RoutingKind::kRandom};
  one_block.spec.sm_budget = 1;
  cases.push_back(one_block);
  for (ScaleFormat format : {ScaleFormat::kFp32, ScaleFormat::kUe8m0}) {
    cases.push_back({Fp8(HtSpec("Standard" + r, ranks, 256, 7168, 64, 8), format, false),
                     RoutingKind::kRandom});
  }
}

// A rank per GPU: R = 1 runs everywhere with a GPU, R = 2 skips on one GPU.
std::vector<HtCase> Cases() {
  std::vector<HtCase> cases;
  for (int ranks : {1, 2}) {
    const std::string r = "_R" + std::to_string(ranks);
    for (DType dtype : {DType::kBf16, DType::kFp16, DType::kFp32}) {
      cases.push_back({HtSpec("Dtype_" + std::string(DTypeName(dtype)) + r, ranks, 64, 4104, 32,
                              8, dtype),
                       RoutingKind::kSparse});
    }
    for (RoutingKind routing : {RoutingKind::kRandom, RoutingKind::kAllAbsent,
                                RoutingKind::kHotExpert}) {
      cases.push_back({HtSpec(RoutingName(routing) + r, ranks, 256, 7168, 64, 8), routing});
    }
    cases.push_back({HtSpec("Small" + r, ranks, 8, 136, 16, 3), RoutingKind::kSparse});
    // T past the point from which the routing bind runs chunked: T and T - 1 tokens bind chunked.
    cases.push_back({HtSpec("ChunkedBind" + r, ranks, 256, 256,
                            kernels::kRoutingChunkedFasterFromTokensHighThroughput + 33, 8),
                     RoutingKind::kRandom});
    // One block strides over every row.
    HtCase one_block{HtSpec("OneBlock" + r, ranks, 16, 2048, 48, 4), RoutingKind::kRandom};
    one_block.spec.sm_budget = 1;
    cases.push_back(one_block);
    AddFp8Cases(cases, ranks, r);
  }
  return cases;
}

class HighThroughputGpuTest : public ::testing::TestWithParam<HtCase> {};

TEST_P(HighThroughputGpuTest, MatchesReferenceBitForBit) {
  const HtCase& c = GetParam();
  EPD_REQUIRE_GPUS(c.spec.ranks);
  Backend& backend = *SharedBackend();
  MoeHarness harness(backend, c.spec);
  if (::testing::Test::HasFailure()) return;
  RunRounds(backend, harness, c.routing);
}

INSTANTIATE_TEST_SUITE_P(Table, HighThroughputGpuTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<HtCase>& info) {
                           return info.param.spec.name;
                         });

// Several ranks on one GPU (SharedGpuBackend): the protocol with R = 2 and 4 on any GPU host.
std::vector<HtCase> SharedCases() {
  std::vector<HtCase> cases;
  for (int ranks : {2, 4}) {
    const std::string r = "R" + std::to_string(ranks);
    cases.push_back({HtSpec(r + "_Sparse", ranks, 64, 4104, 24, 8), RoutingKind::kSparse});
    cases.push_back({HtSpec(r + "_HotExpert", ranks, 256, 7168, 16, 8), RoutingKind::kHotExpert});
    cases.push_back({HtSpec(r + "_AllAbsent", ranks, 256, 7168, 16, 8), RoutingKind::kAllAbsent});
    cases.push_back({Fp8(HtSpec(r + "_Sparse", ranks, 64, 640, 24, 8), ScaleFormat::kFp32, false),
                     RoutingKind::kSparse});
    cases.push_back({Fp8(HtSpec(r + "_HotExpert", ranks, 256, 7168, 16, 8), ScaleFormat::kUe8m0,
                         false),
                     RoutingKind::kHotExpert});
    cases.push_back({Fp8(HtSpec(r + "_Sparse", ranks, 64, 640, 24, 8), ScaleFormat::kUe8m0, true),
                     RoutingKind::kSparse});
    cases.push_back({Fp8(HtSpec(r + "_HotExpert", ranks, 64, 640, 24, 8), ScaleFormat::kFp32,
                         true),
                     RoutingKind::kHotExpert});
  }
  return cases;
}

class HighThroughputSharedGpuTest : public ::testing::TestWithParam<HtCase> {};

TEST_P(HighThroughputSharedGpuTest, MatchesReferenceBitForBit) {
  const HtCase& c = GetParam();
  EPD_REQUIRE_GPUS(1);
  RunRoundsOnSharedGpu(c.spec, c.routing);
}

INSTANTIATE_TEST_SUITE_P(Table, HighThroughputSharedGpuTest, ::testing::ValuesIn(SharedCases()),
                         [](const ::testing::TestParamInfo<HtCase>& info) {
                           return info.param.spec.name;
                         });

// Every token of every rank selects one hot expert: its rank receives R * T rows, more than
// recv_capacity = T. Every rank fails with RESOURCE_EXHAUSTED naming rank, rows, capacity;
// a dispatch within capacity then works again.
class HighThroughputCapacityTest : public ::testing::TestWithParam<bool> {};

TEST_P(HighThroughputCapacityTest, OverflowFailsEveryRankNamingRowsAndCapacity) {
  EPD_REQUIRE_GPUS(1);
  Backend* backend = SharedGpuBackend();
  ASSERT_NE(backend, nullptr);
  CaseSpec spec = HtSpec("HtOverflow", 2, 8, 256, 16, 2);
  if (GetParam()) spec = Fp8(spec, ScaleFormat::kFp32, false);
  spec.recv_capacity = spec.tokens;
  MoeHarness harness(*backend, spec, {SharedGpuDevice(0), SharedGpuDevice(1)});
  if (::testing::Test::HasFailure()) return;
  auto hot = harness.MakeInputs(RoutingKind::kHotExpert, {16, 16}, 7, false, true);
  for (const Status& s : harness.Update(hot)) ASSERT_TRUE(s.ok()) << s.ToString();
  for (const Status& s : harness.Dispatch()) {
    EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s.ToString();
    EXPECT_NE(s.message().find("rows, more than recv_capacity=16"), std::string::npos)
        << s.message();
  }
  auto fits = harness.MakeInputs(RoutingKind::kRandom, {4, 3}, 8, false, true);
  for (const Status& s : harness.Update(fits)) ASSERT_TRUE(s.ok()) << s.ToString();
  for (const Status& s : harness.Dispatch()) ASSERT_TRUE(s.ok()) << s.ToString();
  harness.ExpectDispatchMatches(fits, {4, 3});
}

INSTANTIATE_TEST_SUITE_P(Payload, HighThroughputCapacityTest, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Fp8" : "TokenDtype"; });

}  // namespace
}  // namespace epd::gputest
