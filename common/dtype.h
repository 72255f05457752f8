// Element types, layouts and algorithms of the data plane, with host-side conversions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

#include "common/status.h"

namespace epd {

// kFp8E4m3 and kUint8 appear only in fp8 dispatch payloads: e4m3 rows and ue8m0 scale bytes
// (common/fp8.h); they are never a group's token dtype.
enum class DType : int {
  kBf16 = 0,
  kFp16 = 1,
  kFp32 = 2,
  kInt32 = 3,
  kInt64 = 4,
  kFp8E4m3 = 5,
  kUint8 = 6
};
enum class Layout : int { kExpertMajor = 0, kRankMajor = 1 };
// kAuto is a request only: GroupConfig::ResolveAlgorithm turns it into one of the others before
// a group is validated or built (group_config.h states the rule).
enum class Algorithm : int { kLowLatency = 0, kHighThroughput = 1, kAuto = 2 };

size_t DTypeSize(DType dtype);
std::string_view DTypeName(DType dtype);
std::string_view LayoutName(Layout layout);
std::string_view AlgorithmName(Algorithm algorithm);
StatusOr<DType> ParseDType(std::string_view name);
StatusOr<Layout> ParseLayout(std::string_view name);
StatusOr<Algorithm> ParseAlgorithm(std::string_view name);
inline bool IsTokenDType(DType d) {
  return d == DType::kBf16 || d == DType::kFp16 || d == DType::kFp32;
}

// Host conversions with round-to-nearest-even, identical to the device intrinsics
// (__float2bfloat16_rn, __float2half_rn), so cpu and cuda results agree bit for bit.
float Bf16ToFloat(uint16_t bits);
uint16_t FloatToBf16(float value);
float Fp16ToFloat(uint16_t bits);
uint16_t FloatToFp16(float value);

// Reads element i of a token row as float / writes a float rounded to the dtype.
float LoadAsFloat(const void* row, DType dtype, size_t i);
void StoreFromFloat(void* row, DType dtype, size_t i, float value);

}  // namespace epd
