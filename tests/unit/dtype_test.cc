#include "common/dtype.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace epd {
namespace {

TEST(DTypeTest, SizesAndNamesRoundTrip) {
  for (DType d : {DType::kBf16, DType::kFp16, DType::kFp32, DType::kInt32, DType::kInt64}) {
    auto parsed = ParseDType(DTypeName(d));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, d);
  }
  EXPECT_EQ(DTypeSize(DType::kBf16), 2u);
  EXPECT_EQ(DTypeSize(DType::kInt64), 8u);
  EXPECT_EQ(ParseDType("fp8").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(*ParseLayout("rank_major"), Layout::kRankMajor);
  EXPECT_FALSE(ParseLayout("row_major").ok());
}

TEST(DTypeTest, Bf16RoundsToNearestEven) {
  EXPECT_EQ(FloatToBf16(1.0f), 0x3F80);
  EXPECT_EQ(FloatToBf16(-2.0f), 0xC000);
  // 1 + 2^-8 is exactly halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
  EXPECT_EQ(FloatToBf16(1.0f + std::ldexp(1.0f, -8)), 0x3F80);
  // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: rounds up to even.
  EXPECT_EQ(FloatToBf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3F82);
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_EQ(Bf16ToFloat(0x3F80), 1.0f);
}

TEST(DTypeTest, Fp16ConvertsNormalsSubnormalsAndOverflow) {
  EXPECT_EQ(FloatToFp16(1.0f), 0x3C00);
  EXPECT_EQ(FloatToFp16(-2.5f), 0xC100);
  EXPECT_EQ(FloatToFp16(65504.0f), 0x7BFF);               // largest finite half
  EXPECT_EQ(FloatToFp16(65520.0f), 0x7C00);               // rounds to infinity
  EXPECT_EQ(FloatToFp16(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(FloatToFp16(std::ldexp(1.0f, -25)), 0x0000);  // halfway to zero: ties to even
  EXPECT_EQ(FloatToFp16(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(FloatToFp16(1.0f + std::ldexp(1.0f, -11)), 0x3C00);  // tie to even
  EXPECT_EQ(Fp16ToFloat(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(Fp16ToFloat(0x7BFF), 65504.0f);
  EXPECT_TRUE(std::isinf(Fp16ToFloat(0x7C00)));
}

TEST(DTypeTest, EveryHalfValueRoundTripsThroughFloat) {
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const auto half = static_cast<uint16_t>(bits);
    if (!std::isnan(Fp16ToFloat(half))) {
      ASSERT_EQ(FloatToFp16(Fp16ToFloat(half)), half) << "fp16 bits " << bits;
    }
    if (!std::isnan(Bf16ToFloat(half))) {
      ASSERT_EQ(FloatToBf16(Bf16ToFloat(half)), half) << "bf16 bits " << bits;
    }
  }
}

TEST(DTypeTest, LoadAndStoreUseTheDType) {
  uint16_t row16[2] = {};
  StoreFromFloat(row16, DType::kBf16, 1, 3.0f);
  EXPECT_EQ(LoadAsFloat(row16, DType::kBf16, 1), 3.0f);
  float row32[2] = {};
  StoreFromFloat(row32, DType::kFp32, 0, 0.1f);
  EXPECT_EQ(LoadAsFloat(row32, DType::kFp32, 0), 0.1f);
}

}  // namespace
}  // namespace epd
