#include "common/fp8.h"

#include <bit>
#include <cmath>
#include <limits>

#include "common/dtype.h"

namespace epd {
namespace {

// Magnitude code of a finite a in [0, 448], rounded to nearest even.
uint8_t EncodeMagnitude(float a) {
  if (a < 0.015625f) {               // below 2^-6, the smallest normal: subnormal steps of 2^-9
    const float steps = a * 512.0f;  // exact: scaling by a power of two
    const float whole = std::floor(steps);
    const float fraction = steps - whole;  // exact
    auto code = static_cast<uint8_t>(whole);
    if (fraction > 0.5f || (fraction == 0.5f && (code & 1) != 0)) ++code;  // 8 = 2^-6, correct
    return code;
  }
  const uint32_t bits = std::bit_cast<uint32_t>(a);
  const int exponent = static_cast<int>(bits >> 23) - 127;  // in [-6, 8]
  const uint32_t mantissa = bits & 0x7FFFFF;
  uint32_t kept = mantissa >> 20;  // 3 mantissa bits
  const uint32_t dropped = mantissa & 0xFFFFF;
  constexpr uint32_t kHalf = 0x80000;
  if (dropped > kHalf || (dropped == kHalf && (kept & 1) != 0)) ++kept;
  // A carry out of the mantissa moves into the exponent field: still the right code, and a
  // <= 448 never carries into the NaN pattern.
  return static_cast<uint8_t>((static_cast<uint32_t>(exponent + 7) << 3) + kept);
}

}  // namespace

std::string_view DispatchFormatName(DispatchFormat format) {
  return format == DispatchFormat::kFp8E4m3 ? "fp8_e4m3" : "token_dtype";
}

std::string_view ScaleFormatName(ScaleFormat format) {
  return format == ScaleFormat::kUe8m0 ? "ue8m0" : "fp32";
}

StatusOr<DispatchFormat> ParseDispatchFormat(std::string_view name) {
  if (name == "token_dtype") return DispatchFormat::kTokenDType;
  if (name == "fp8_e4m3") return DispatchFormat::kFp8E4m3;
  return InvalidArgumentError("unknown dispatch dtype '{}' (expected token_dtype or fp8_e4m3)",
                              name);
}

StatusOr<ScaleFormat> ParseScaleFormat(std::string_view name) {
  if (name == "fp32") return ScaleFormat::kFp32;
  if (name == "ue8m0") return ScaleFormat::kUe8m0;
  return InvalidArgumentError("unknown scale format '{}' (expected fp32 or ue8m0)", name);
}

uint8_t EncodeE4m3(float value) {
  if (std::isnan(value)) return kE4m3NaN;
  const uint8_t sign = std::signbit(value) ? 0x80 : 0x00;
  const float a = std::fmin(std::fabs(value), kE4m3Max);
  return static_cast<uint8_t>(sign | EncodeMagnitude(a));
}

float DecodeE4m3(uint8_t code) {
  const float sign = (code & 0x80) != 0 ? -1.0f : 1.0f;
  const int exponent = (code >> 3) & 0xF;
  const int mantissa = code & 0x7;
  if (exponent == 0xF && mantissa == 0x7) return std::numeric_limits<float>::quiet_NaN();
  if (exponent == 0) return sign * std::ldexp(static_cast<float>(mantissa), -9);
  return sign * std::ldexp(1.0f + static_cast<float>(mantissa) / 8.0f, exponent - 7);
}

float Fp32ScaleFromAmax(float amax) { return amax > 0.0f ? amax / kE4m3Max : 1.0f; }

uint8_t Ue8m0FromAmax(float amax) {
  if (!(amax > 0.0f)) return kUe8m0One;
  const uint32_t bits = std::bit_cast<uint32_t>(amax / kE4m3Max);
  uint32_t exponent = bits >> 23;          // the sign is 0; amax is finite, so this is < 255
  if ((bits & 0x7FFFFF) != 0) ++exponent;  // round up to the next power of two
  if (exponent < 1) exponent = 1;          // no subnormal scales
  return static_cast<uint8_t>(exponent);   // amax <= bf16 max keeps this <= 247
}

float Ue8m0ToFloat(uint8_t byte) {
  return byte == 0 ? std::bit_cast<float>(uint32_t{0x00400000}) : std::bit_cast<float>(static_cast<uint32_t>(byte) << 23);
}

void QuantizeRowE4m3(const uint16_t* row, int hidden, ScaleFormat format, uint8_t* q,
                     void* scales) {
  for (int block = 0; block < hidden / kFp8BlockChannels; ++block) {
    const int first = block * kFp8BlockChannels;
    float amax = 0.0f;
    for (int i = first; i < first + kFp8BlockChannels; ++i) {
      const float v = Bf16ToFloat(row[i]);
      if (std::isfinite(v)) amax = std::fmax(amax, std::fabs(v));
    }
    float scale;
    if (format == ScaleFormat::kFp32) {
      scale = Fp32ScaleFromAmax(amax);
      static_cast<float*>(scales)[block] = scale;
    } else {
      const uint8_t byte = Ue8m0FromAmax(amax);
      scale = Ue8m0ToFloat(byte);
      static_cast<uint8_t*>(scales)[block] = byte;
    }
    for (int i = first; i < first + kFp8BlockChannels; ++i) {
      q[i] = EncodeE4m3(Bf16ToFloat(row[i]) / scale);
    }
  }
}

}  // namespace epd
