#include "common/fp8.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "common/dtype.h"

namespace epd {
namespace {

// Independent oracle: the nearest of the 127 finite non-negative e4m3 magnitudes (codes
// 0..0x7E, increasing), ties to the even code, found in the decode table (no bit tricks
// shared with EncodeE4m3).
uint8_t NearestByTable(float value) {
  static const std::vector<float> table = [] {
    std::vector<float> t;
    for (int code = 0; code <= 0x7E; ++code) t.push_back(DecodeE4m3(static_cast<uint8_t>(code)));
    return t;
  }();
  const float a = std::fmin(std::fabs(value), 448.0f);
  const int hi = static_cast<int>(std::lower_bound(table.begin(), table.end(), a) - table.begin());
  int best = hi;
  if (hi > 0 && table[hi] != a) {
    const double below = static_cast<double>(a) - table[hi - 1];
    const double above = static_cast<double>(table[hi]) - a;
    if (below < above || (below == above && ((hi - 1) & 1) == 0)) best = hi - 1;
  }
  return static_cast<uint8_t>((std::signbit(value) ? 0x80 : 0) | best);
}

TEST(Fp8Test, DecodesHandWorkedCodes) {
  EXPECT_EQ(DecodeE4m3(0x00), 0.0f);
  EXPECT_TRUE(std::signbit(DecodeE4m3(0x80)));
  EXPECT_EQ(DecodeE4m3(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_EQ(DecodeE4m3(0x07), 7 * std::ldexp(1.0f, -9));
  EXPECT_EQ(DecodeE4m3(0x08), std::ldexp(1.0f, -6));  // smallest normal
  EXPECT_EQ(DecodeE4m3(0x38), 1.0f);
  EXPECT_EQ(DecodeE4m3(0x39), 1.125f);
  EXPECT_EQ(DecodeE4m3(0xC0), -2.0f);
  EXPECT_EQ(DecodeE4m3(0x7E), 448.0f);
  EXPECT_EQ(DecodeE4m3(0xFE), -448.0f);
  EXPECT_TRUE(std::isnan(DecodeE4m3(0x7F)));
  EXPECT_TRUE(std::isnan(DecodeE4m3(0xFF)));
}

TEST(Fp8Test, EncodeInvertsDecodeOnEveryCode) {
  for (int code = 0; code < 256; ++code) {
    if ((code & 0x7F) == 0x7F) continue;  // NaNs
    EXPECT_EQ(EncodeE4m3(DecodeE4m3(static_cast<uint8_t>(code))), code) << "code " << code;
  }
}

TEST(Fp8Test, MidpointsRoundToEvenAndNeighboursToNearest) {
  for (int code = 0; code < 0x7E; ++code) {
    const float lo = DecodeE4m3(static_cast<uint8_t>(code));
    const float hi = DecodeE4m3(static_cast<uint8_t>(code + 1));
    const float mid = (lo + hi) / 2;  // exact: one more mantissa bit than e4m3 has
    const int even = (code & 1) == 0 ? code : code + 1;
    EXPECT_EQ(EncodeE4m3(mid), even) << "midpoint above code " << code;
    EXPECT_EQ(EncodeE4m3(std::nextafter(mid, 0.0f)), code) << "below midpoint " << code;
    EXPECT_EQ(EncodeE4m3(std::nextafter(mid, 1000.0f)), code + 1) << "above midpoint " << code;
    EXPECT_EQ(EncodeE4m3(-mid), 0x80 | even);
  }
}

TEST(Fp8Test, HandWorkedRoundingAndSaturation) {
  EXPECT_EQ(EncodeE4m3(1.0625f), 0x38);  // halfway 1 .. 1.125: even is 1.0
  EXPECT_EQ(EncodeE4m3(1.1875f), 0x3A);  // halfway 1.125 .. 1.25: even is 1.25
  EXPECT_EQ(EncodeE4m3(448.0f), 0x7E);
  EXPECT_EQ(EncodeE4m3(460.0f), 0x7E);  // would round to 448 anyway
  EXPECT_EQ(EncodeE4m3(1.0e6f), 0x7E);  // saturates, never NaN
  EXPECT_EQ(EncodeE4m3(-1.0e6f), 0xFE);
  EXPECT_EQ(EncodeE4m3(std::numeric_limits<float>::infinity()), 0x7E);
  EXPECT_EQ(EncodeE4m3(-std::numeric_limits<float>::infinity()), 0xFE);
  EXPECT_EQ(EncodeE4m3(std::numeric_limits<float>::quiet_NaN()), 0x7F);
  EXPECT_EQ(EncodeE4m3(-std::numeric_limits<float>::quiet_NaN()), 0x7F);
  EXPECT_EQ(EncodeE4m3(0.0f), 0x00);
  EXPECT_EQ(EncodeE4m3(-0.0f), 0x80);
  EXPECT_EQ(EncodeE4m3(std::ldexp(1.0f, -10)), 0x00);   // half the smallest subnormal: even 0
  EXPECT_EQ(EncodeE4m3(std::ldexp(3.0f, -10)), 0x02);   // 1.5 steps: even is 2
  EXPECT_EQ(EncodeE4m3(-std::ldexp(1.0f, -12)), 0x80);  // underflow keeps the sign
  EXPECT_EQ(EncodeE4m3(std::ldexp(15.5f, -10)), 0x08);  // 7.75 steps round into the normals
}

TEST(Fp8Test, EncodeMatchesNearestByTableOnASweepOfFloats) {
  // Every 251st float from 0 to 512 (about 4.5 million values), both signs.
  const uint32_t end = 0x44000000;  // 512.0f
  int checked = 0;
  for (uint32_t bits = 0; bits < end; bits += 251) {
    const float v = std::bit_cast<float>(bits);
    ASSERT_EQ(EncodeE4m3(v), NearestByTable(v)) << "value " << v;
    ASSERT_EQ(EncodeE4m3(-v), NearestByTable(-v)) << "value " << -v;
    ++checked;
  }
  EXPECT_GT(checked, 4'000'000);
}

TEST(Fp8Test, Fp32ScaleIsAmaxOver448) {
  EXPECT_EQ(Fp32ScaleFromAmax(448.0f), 1.0f);
  EXPECT_EQ(Fp32ScaleFromAmax(896.0f), 2.0f);
  EXPECT_EQ(Fp32ScaleFromAmax(1.0f), 1.0f / 448.0f);
  EXPECT_EQ(Fp32ScaleFromAmax(0.0f), 1.0f);  // zero block
}

TEST(Fp8Test, Ue8m0ScaleRoundsUpToAPowerOfTwo) {
  EXPECT_EQ(Ue8m0FromAmax(448.0f), 127);               // s = 1 exactly
  EXPECT_EQ(Ue8m0FromAmax(449.0f), 128);               // s just above 1: 2
  EXPECT_EQ(Ue8m0FromAmax(224.0f), 126);               // s = 0.5
  EXPECT_EQ(Ue8m0FromAmax(1.0f), 127 - 8);             // 1/448 -> 2^-8
  EXPECT_EQ(Ue8m0FromAmax(0.0f), kUe8m0One);           // zero block
  EXPECT_EQ(Ue8m0FromAmax(Bf16ToFloat(0x0001)), 1);    // tiny amax: clamped at 2^-126
  EXPECT_EQ(Ue8m0FromAmax(Bf16ToFloat(0x7F7F)), 247);  // largest bf16
  EXPECT_EQ(Ue8m0ToFloat(127), 1.0f);
  EXPECT_EQ(Ue8m0ToFloat(130), 8.0f);
  EXPECT_EQ(Ue8m0ToFloat(0), std::ldexp(1.0f, -127));
  EXPECT_EQ(Ue8m0ToFloat(1), std::ldexp(1.0f, -126));
}

std::vector<uint16_t> Row(int hidden, float value) {
  return std::vector<uint16_t>(hidden, FloatToBf16(value));
}

TEST(Fp8Test, QuantizesAHandWorkedRowWithFp32Scales) {
  std::vector<uint16_t> row = Row(256, 0.0f);
  // Block 0: amax 896 -> scale 2; 1.0 / 2 = 0.5 (0x30), -896 / 2 = -448 (0xFE),
  // 3.0 / 2 = 1.5 (0x3C). Block 1 stays all zero: scale 1.
  row[0] = FloatToBf16(1.0f);
  row[1] = FloatToBf16(-896.0f);
  row[2] = FloatToBf16(3.0f);
  std::vector<uint8_t> q(256, 0xAA);
  float scales[2] = {-1, -1};
  QuantizeRowE4m3(row.data(), 256, ScaleFormat::kFp32, q.data(), scales);
  EXPECT_EQ(scales[0], 2.0f);
  EXPECT_EQ(scales[1], 1.0f);
  EXPECT_EQ(q[0], 0x30);
  EXPECT_EQ(q[1], 0xFE);
  EXPECT_EQ(q[2], 0x3C);
  EXPECT_EQ(q[3], 0x00);
  for (int i = 128; i < 256; ++i) ASSERT_EQ(q[i], 0x00) << i;
}

TEST(Fp8Test, QuantizesAHandWorkedRowWithUe8m0Scales) {
  std::vector<uint16_t> row = Row(128, 0.0f);
  // amax 600 -> s = 1.339..: scale 2 (byte 128); 600 / 2 = 300 -> 288 or 320: 300 is nearer
  // 288 (0x79: 1.125 * 256); -0.75 / 2 = -0.375 (0xAC: 1.5 * 2^-2 with the sign).
  row[5] = FloatToBf16(600.0f);
  row[6] = FloatToBf16(-0.75f);
  std::vector<uint8_t> q(128);
  uint8_t scale = 0;
  QuantizeRowE4m3(row.data(), 128, ScaleFormat::kUe8m0, q.data(), &scale);
  EXPECT_EQ(scale, 128);
  EXPECT_EQ(q[5], 0x79);
  EXPECT_EQ(q[6], 0xAC);
  EXPECT_EQ(q[0], 0x00);
}

TEST(Fp8Test, NaNAndInfinityDoNotSetTheScale) {
  std::vector<uint16_t> row = Row(128, 0.0f);
  row[0] = 0x7FC0;  // NaN
  row[1] = 0xFFC0;  // -NaN
  row[2] = 0x7F80;  // +Inf
  row[3] = 0xFF80;  // -Inf
  row[4] = FloatToBf16(4.0f);
  std::vector<uint8_t> q(128);
  float scale = 0;
  QuantizeRowE4m3(row.data(), 128, ScaleFormat::kFp32, q.data(), &scale);
  EXPECT_EQ(scale, 4.0f / 448.0f);  // amax from the finite 4.0 only
  EXPECT_EQ(q[0], kE4m3NaN);
  EXPECT_EQ(q[1], kE4m3NaN);
  EXPECT_EQ(q[2], 0x7E);
  EXPECT_EQ(q[3], 0xFE);
  EXPECT_EQ(q[4], EncodeE4m3(4.0f / (4.0f / 448.0f)));

  // Only non-finite values: scale 1, NaN stays NaN, infinities saturate.
  std::vector<uint16_t> bad = Row(128, 0.0f);
  bad[0] = 0x7F80;
  bad[1] = 0x7FC0;
  uint8_t byte = 0;
  QuantizeRowE4m3(bad.data(), 128, ScaleFormat::kUe8m0, q.data(), &byte);
  EXPECT_EQ(byte, kUe8m0One);
  EXPECT_EQ(q[0], 0x7E);
  EXPECT_EQ(q[1], kE4m3NaN);
}

TEST(Fp8Test, DequantizedRowStaysWithinHalfAStep) {
  std::vector<uint16_t> row(1024);
  for (int i = 0; i < 1024; ++i) row[i] = FloatToBf16(std::sin(0.37f * i) * (1 + i % 300));
  for (ScaleFormat format : {ScaleFormat::kFp32, ScaleFormat::kUe8m0}) {
    std::vector<uint8_t> q(1024);
    std::vector<uint8_t> scales(8 * 4);
    QuantizeRowE4m3(row.data(), 1024, format, q.data(), scales.data());
    for (int i = 0; i < 1024; ++i) {
      const int b = i / 128;
      float scale;
      if (format == ScaleFormat::kFp32) {
        std::memcpy(&scale, scales.data() + 4 * b, 4);
      } else {
        scale = Ue8m0ToFloat(scales[b]);
      }
      const float v = Bf16ToFloat(row[i]);
      // e4m3 keeps 3 mantissa bits: relative error <= 2^-4 (normals), absolute 2^-10 * scale.
      const float tolerance = std::fabs(v) * 0.0625f + std::ldexp(scale, -10);
      ASSERT_NEAR(DecodeE4m3(q[i]) * scale, v, tolerance) << "element " << i;
    }
  }
}

TEST(Fp8Test, NamesRoundTrip) {
  EXPECT_EQ(*ParseDispatchFormat("fp8_e4m3"), DispatchFormat::kFp8E4m3);
  EXPECT_EQ(*ParseDispatchFormat(DispatchFormatName(DispatchFormat::kTokenDType)),
            DispatchFormat::kTokenDType);
  EXPECT_EQ(*ParseScaleFormat("ue8m0"), ScaleFormat::kUe8m0);
  EXPECT_EQ(*ParseScaleFormat(ScaleFormatName(ScaleFormat::kFp32)), ScaleFormat::kFp32);
  EXPECT_EQ(ParseScaleFormat("e8m0").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseDispatchFormat("fp8").status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace epd
