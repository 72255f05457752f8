// FP8 dispatch on the CUDA backend, bit for bit against the cpu reference (common/fp8.h):
//  - the device e4m3 encoder on a sweep of floats around every rounding boundary, NaN, Inf;
//  - the device row quantizer (both scale formats) on rows with edge values;
//  - the case table: layouts x scale formats x (daemon quantizes | frontend pre-quantized) x
//    routing (sparse, all -1, hot expert), each through rounds with n in {T, T-1, 1, 0}
//    (RunRounds), on 1 and 2 ranks, plus the standard shape (H 7168, E 256, T 128, K 8) on 1.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <ostream>

#include "common/dtype.h"
#include "common/fp8.h"
#include "kernels/fp8_quant.cuh"
#include "tests/gpu/moe_harness.h"

namespace epd::gputest {
namespace {

float FromBits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

TEST(Fp8DeviceTest, EncoderMatchesTheHostOnEveryRoundingCase) {
  EPD_REQUIRE_GPUS(1);
  // Every sign and exponent; every kept 3-bit mantissa; guard bit 0/1; sticky bits none,
  // lowest, some, all: covers ties, just-below and just-above ties, subnormals, saturation.
  std::vector<float> values;
  for (uint32_t sign = 0; sign < 2; ++sign) {
    for (uint32_t exponent = 0; exponent < 256; ++exponent) {
      for (uint32_t kept = 0; kept < 8; ++kept) {
        for (uint32_t guard = 0; guard < 2; ++guard) {
          for (uint32_t sticky : {0u, 1u, 0x40000u, 0x7FFFFu}) {
            values.push_back(
                FromBits(sign << 31 | exponent << 23 | kept << 20 | guard << 19 | sticky));
          }
        }
      }
    }
  }
  for (uint32_t bits = 0; bits < 0x3D800000; bits += 4099)
    values.push_back(FromBits(bits));  // < 1/16
  const size_t n = values.size();
  DeviceBuffer in(0, n * sizeof(float)), out(0, n);
  in.Upload(values.data(), n * sizeof(float));
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  ASSERT_EQ(kernels::LaunchEncodeE4m3(static_cast<const float*>(in.data()),
                                      static_cast<uint8_t*>(out.data()), n, nullptr),
            cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<uint8_t> got(n);
  out.Download(got.data(), n);
  int mismatches = 0;
  for (size_t i = 0; i < n && mismatches < 10; ++i) {
    const uint8_t want = EncodeE4m3(values[i]);
    if (got[i] != want) {
      ++mismatches;
      ADD_FAILURE() << "value " << values[i] << " (bits 0x" << std::hex
                    << *reinterpret_cast<const uint32_t*>(&values[i]) << "): device 0x"
                    << int(got[i]) << ", host 0x" << int(want);
    }
  }
}

TEST(Fp8DeviceTest, RowQuantizerMatchesTheHostInBothScaleFormats) {
  EPD_REQUIRE_GPUS(1);
  const int rows = 9, hidden = 7168, blocks = hidden / 128;
  std::vector<uint16_t> x(size_t(rows) * hidden);
  uint64_t state = 12345;
  for (auto& v : x) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    v = static_cast<uint16_t>(state >> 48);  // every bf16 bit pattern: NaN, Inf, subnormal
  }
  std::fill(x.begin() + hidden, x.begin() + hidden + 128, 0);  // a zero block on row 1
  for (bool ue8m0 : {false, true}) {
    SCOPED_TRACE(ue8m0 ? "ue8m0" : "fp32");
    const size_t scale_bytes = ue8m0 ? 1 : 4;
    DeviceBuffer dx(0, x.size() * 2), dq(0, x.size()), ds(0, size_t(rows) * blocks * scale_bytes);
    dx.Upload(x.data(), x.size() * 2);
    ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
    ASSERT_EQ(kernels::LaunchQuantizeRowsE4m3(dx.data(), rows, hidden, ue8m0, dq.data(), ds.data(),
                                              nullptr),
              cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    std::vector<uint8_t> got_q(x.size()), want_q(x.size());
    std::vector<uint8_t> got_s(size_t(rows) * blocks * scale_bytes), want_s(got_s.size());
    dq.Download(got_q.data(), got_q.size());
    ds.Download(got_s.data(), got_s.size());
    for (int r = 0; r < rows; ++r) {
      QuantizeRowE4m3(
          x.data() + size_t(r) * hidden, hidden, ue8m0 ? ScaleFormat::kUe8m0 : ScaleFormat::kFp32,
          want_q.data() + size_t(r) * hidden, want_s.data() + size_t(r) * blocks * scale_bytes);
    }
    ExpectBytesEqual(want_s.data(), got_s.data(), got_s.size(), scale_bytes, "scales");
    ExpectBytesEqual(want_q.data(), got_q.data(), got_q.size(), 1, "e4m3");
  }
}

struct Fp8Case {
  CaseSpec spec;
  RoutingKind routing = RoutingKind::kSparse;
};
void PrintTo(const Fp8Case& c, std::ostream* os) { *os << c.spec.name; }

std::vector<Fp8Case> Cases() {
  std::vector<Fp8Case> cases;
  for (int ranks : {1, 2}) {
    for (Layout layout : {Layout::kExpertMajor, Layout::kRankMajor}) {
      for (ScaleFormat format : {ScaleFormat::kFp32, ScaleFormat::kUe8m0}) {
        for (bool prequantized : {false, true}) {
          for (RoutingKind routing :
               {RoutingKind::kSparse, RoutingKind::kAllAbsent, RoutingKind::kHotExpert}) {
            CaseSpec s;
            s.name = "Fp8_R" + std::to_string(ranks) + "_" + std::string(LayoutName(layout)) + "_" +
                     std::string(ScaleFormatName(format)) +
                     (prequantized ? "_prequantized" : "_quantized") +
                     (routing == RoutingKind::kSparse      ? "_sparse"
                      : routing == RoutingKind::kAllAbsent ? "_all_absent"
                                                           : "_hot_expert");
            s.ranks = ranks;
            s.experts = 16;
            s.hidden = 640;  // 5 blocks: an odd count, so a half warp idles in the last pair
            s.tokens = 24;
            s.top_k = 4;
            s.layout = layout;
            s.dispatch_format = DispatchFormat::kFp8E4m3;
            s.scale_format = format;
            s.prequantized = prequantized;
            cases.push_back({s, routing});
          }
        }
      }
    }
  }
  // The standard shape on one GPU; 56 blocks = 3 full parts and a part of 8.
  for (Layout layout : {Layout::kExpertMajor, Layout::kRankMajor}) {
    for (ScaleFormat format : {ScaleFormat::kFp32, ScaleFormat::kUe8m0}) {
      CaseSpec s;
      s.name = "Fp8_Standard_R1_" + std::string(LayoutName(layout)) + "_" +
               std::string(ScaleFormatName(format));
      s.ranks = 1;
      s.experts = 256;
      s.hidden = 7168;
      s.tokens = 128;
      s.top_k = 8;
      s.layout = layout;
      s.dispatch_format = DispatchFormat::kFp8E4m3;
      s.scale_format = format;
      cases.push_back({s, RoutingKind::kRandom});
    }
  }
  return cases;
}

class Fp8DispatchTest : public ::testing::TestWithParam<Fp8Case> {};

TEST_P(Fp8DispatchTest, MatchesReferenceBitForBit) {
  const Fp8Case& c = GetParam();
  EPD_REQUIRE_GPUS(c.spec.ranks);
  Backend& backend = *SharedBackend();
  MoeHarness harness(backend, c.spec);
  if (::testing::Test::HasFailure()) return;
  RunRounds(backend, harness, c.routing);
}

INSTANTIATE_TEST_SUITE_P(Table, Fp8DispatchTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Fp8Case>& info) {
                           return info.param.spec.name;
                         });

// Both algorithms check the fp8 inputs alike (the high-throughput launch shares the payload
// selection of dispatch_payload.h).
TEST(Fp8DispatchErrorsTest, BackendRejectsMistypedScalesAndInPlaceCombine) {
  EPD_REQUIRE_GPUS(1);
  Backend& backend = *SharedBackend();
  for (Algorithm algorithm : {Algorithm::kLowLatency, Algorithm::kHighThroughput}) {
    SCOPED_TRACE(AlgorithmName(algorithm));
    CaseSpec s;
    s.name = "Fp8_Errors_" + std::string(AlgorithmName(algorithm));
    s.ranks = 1;
    s.experts = 4;
    s.hidden = 256;
    s.tokens = 8;
    s.top_k = 2;
    s.algorithm = algorithm;
    s.dispatch_format = DispatchFormat::kFp8E4m3;
    MoeHarness harness(backend, s);
    if (::testing::Test::HasFailure()) return;
    auto inputs = harness.MakeInputs(RoutingKind::kRandom, {4}, 1, false, true);
    for (const Status& st : harness.Update(inputs)) ASSERT_TRUE(st.ok()) << st.ToString();
    DeviceBuffer xq(0, 8 * 256), scales(0, 8 * 2 * 4);
    DispatchArgs dispatch;
    dispatch.x = TensorView{xq.data(), DType::kFp8E4m3, {4, 256}};
    dispatch.x_scales = TensorView{scales.data(), DType::kUint8, {4, 2}};  // fp32 expected
    Status status = backend.Dispatch(harness.handle(0), dispatch);
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(status.message().find("x_scales must be fp32 [>= 4, 2]"), std::string::npos)
        << status.ToString();
    CombineArgs combine;
    DeviceBuffer out(0, 8 * 256 * 2);
    combine.out = TensorView{out.data(), DType::kBf16, {4, 256}};
    status = backend.Combine(harness.handle(0), combine);
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(status.message().find("no expert_out"), std::string::npos) << status.ToString();
  }
}

}  // namespace
}  // namespace epd::gputest
