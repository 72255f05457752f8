#include "common/dtype.h"

#include <cmath>

namespace epd {

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kFp8E4m3:
    case DType::kUint8:
      return 1;
    case DType::kBf16:
    case DType::kFp16:
      return 2;
    case DType::kFp32:
    case DType::kInt32:
      return 4;
    case DType::kInt64:
      return 8;
  }
  return 0;
}

std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kBf16:
      return "bf16";
    case DType::kFp16:
      return "fp16";
    case DType::kFp32:
      return "fp32";
    case DType::kInt32:
      return "int32";
    case DType::kInt64:
      return "int64";
    case DType::kFp8E4m3:
      return "fp8_e4m3";
    case DType::kUint8:
      return "uint8";
  }
  return "unknown";
}

std::string_view LayoutName(Layout layout) {
  return layout == Layout::kExpertMajor ? "expert_major" : "rank_major";
}

std::string_view AlgorithmName(Algorithm algorithm) {
  switch (algorithm) {
    case Algorithm::kLowLatency:
      return "low_latency";
    case Algorithm::kHighThroughput:
      return "high_throughput";
    default:
      return "auto";
  }
}

StatusOr<DType> ParseDType(std::string_view name) {
  for (DType d : {DType::kBf16, DType::kFp16, DType::kFp32, DType::kInt32, DType::kInt64,
                  DType::kFp8E4m3, DType::kUint8}) {
    if (name == DTypeName(d)) return d;
  }
  return InvalidArgumentError(
      "unknown dtype '{}' (expected bf16, fp16, fp32, int32, int64, fp8_e4m3 or uint8)", name);
}

StatusOr<Layout> ParseLayout(std::string_view name) {
  if (name == "expert_major") return Layout::kExpertMajor;
  if (name == "rank_major") return Layout::kRankMajor;
  return InvalidArgumentError("unknown layout '{}' (expected expert_major or rank_major)", name);
}

StatusOr<Algorithm> ParseAlgorithm(std::string_view name) {
  if (name == "low_latency") return Algorithm::kLowLatency;
  if (name == "high_throughput") return Algorithm::kHighThroughput;
  if (name == "auto") return Algorithm::kAuto;
  return InvalidArgumentError(
      "unknown algorithm '{}' (expected low_latency, high_throughput or auto)", name);
}

float Bf16ToFloat(uint16_t bits) {
  uint32_t word = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &word, sizeof(value));
  return value;
}

uint16_t FloatToBf16(float value) {
  uint32_t word;
  std::memcpy(&word, &value, sizeof(word));
  if (std::isnan(value)) return static_cast<uint16_t>((word >> 16) | 0x40);  // quiet NaN
  uint32_t rounding_bias = 0x7FFF + ((word >> 16) & 1);  // round to nearest, ties to even
  return static_cast<uint16_t>((word + rounding_bias) >> 16);
}

float Fp16ToFloat(uint16_t bits) {
  uint32_t sign = static_cast<uint32_t>(bits & 0x8000) << 16;
  uint32_t exponent = (bits >> 10) & 0x1F;
  uint32_t mantissa = bits & 0x3FF;
  uint32_t word;
  if (exponent == 0) {
    if (mantissa == 0) {
      word = sign;
    } else {  // subnormal: normalise
      int shift = 0;
      while ((mantissa & 0x400) == 0) {
        mantissa <<= 1;
        ++shift;
      }
      mantissa &= 0x3FF;
      word = sign | static_cast<uint32_t>(127 - 15 - shift + 1) << 23 | mantissa << 13;
    }
  } else if (exponent == 0x1F) {
    word = sign | 0x7F800000 | mantissa << 13;
  } else {
    word = sign | (exponent + 127 - 15) << 23 | mantissa << 13;
  }
  float value;
  std::memcpy(&value, &word, sizeof(value));
  return value;
}

uint16_t FloatToFp16(float value) {
  uint32_t word;
  std::memcpy(&word, &value, sizeof(word));
  uint16_t sign = static_cast<uint16_t>((word >> 16) & 0x8000);
  uint32_t abs_word = word & 0x7FFFFFFF;
  if (abs_word >= 0x7F800000) {  // inf or NaN
    return sign | (abs_word > 0x7F800000 ? 0x7E00 : 0x7C00);
  }
  if (abs_word >= 0x477FF000) return sign | 0x7C00;  // rounds to >= 65520: overflow to inf
  int exponent = static_cast<int>(abs_word >> 23) - 127;
  uint32_t mantissa = (abs_word & 0x7FFFFF) | 0x800000;  // with the implicit bit
  int shift;
  uint16_t biased;
  if (exponent < -14) {  // subnormal half (or zero)
    shift = 13 + (-14 - exponent);
    biased = 0;
    if (shift > 24) return sign;  // below half of the smallest subnormal
  } else {
    shift = 13;
    biased = static_cast<uint16_t>(exponent + 15);
    mantissa &= 0x7FFFFF;
  }
  uint32_t truncated = mantissa >> shift;
  uint32_t remainder = mantissa & ((1u << shift) - 1);
  uint32_t halfway = 1u << (shift - 1);
  if (remainder > halfway || (remainder == halfway && (truncated & 1))) ++truncated;
  // A mantissa carry rolls into the exponent field, which is the correct result.
  return static_cast<uint16_t>(sign | ((static_cast<uint32_t>(biased) << 10) + truncated));
}

float LoadAsFloat(const void* row, DType dtype, size_t i) {
  switch (dtype) {
    case DType::kBf16:
      return Bf16ToFloat(static_cast<const uint16_t*>(row)[i]);
    case DType::kFp16:
      return Fp16ToFloat(static_cast<const uint16_t*>(row)[i]);
    case DType::kFp32:
      return static_cast<const float*>(row)[i];
    default:
      return 0.0f;
  }
}

void StoreFromFloat(void* row, DType dtype, size_t i, float value) {
  switch (dtype) {
    case DType::kBf16:
      static_cast<uint16_t*>(row)[i] = FloatToBf16(value);
      break;
    case DType::kFp16:
      static_cast<uint16_t*>(row)[i] = FloatToFp16(value);
      break;
    case DType::kFp32:
      static_cast<float*>(row)[i] = value;
      break;
    default:
      break;
  }
}

}  // namespace epd
