// FP8 e4m3 dispatch payload: the exact quantization every backend reproduces bit for bit.
//
// A token row of H bf16 values (H a multiple of 128) becomes H e4m3 bytes plus one scale per
// 128-channel block, so that value ~= decode(q) * scale. Per block b:
//  1. amax = max |v| over the block's FINITE values (NaN and +-Inf do not count); exact.
//  2. scale (the divisor), from s = amax / 448 (one IEEE division, round to nearest even):
//       fp32:  scale = s; stored as the fp32 itself.
//       ue8m0: scale = the smallest power of two >= s, at least 2^-126; stored as its biased
//              exponent byte (scale = 2^(byte - 127), the fp32 exponent field).
//     A block without a finite nonzero value (all zeros, or only NaN/Inf) has scale 1.0
//     (ue8m0 byte 127), so it quantizes to zeros without dividing by zero.
//  3. q = e4m3(clamp(v / scale, -448, 448)): one IEEE division, then round to nearest even
//     (e4m3 subnormals included, signs of zero kept), never rounding up past 448. NaN becomes
//     0x7F (the positive e4m3 NaN, whatever the input's sign); +-Inf become +-448 (0x7E/0xFE).
// Only bf16 tokens are quantized (GroupConfig enforces it): their amax / 448 never underflows
// to zero, so a block with a finite nonzero value always has a positive scale.
//
// e4m3 here is the "fn" variant (bias 7, no infinities, NaN = S.1111.111, max 448) that
// Hopper's cvt.*.e4m3 instructions produce.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/status.h"

namespace epd {

// What dispatch moves: rows of the group's token dtype, or e4m3 rows with block scales.
enum class DispatchFormat : int { kTokenDType = 0, kFp8E4m3 = 1 };
// How an fp8 row's block scales are stored.
enum class ScaleFormat : int { kFp32 = 0, kUe8m0 = 1 };

constexpr int kFp8BlockChannels = 128;  // channels per scale
constexpr float kE4m3Max = 448.0f;
constexpr uint8_t kE4m3NaN = 0x7F;
constexpr uint8_t kUe8m0One = 127;  // the stored byte of scale 1.0

std::string_view DispatchFormatName(DispatchFormat format);  // "token_dtype", "fp8_e4m3"
std::string_view ScaleFormatName(ScaleFormat format);        // "fp32", "ue8m0"
StatusOr<DispatchFormat> ParseDispatchFormat(std::string_view name);
StatusOr<ScaleFormat> ParseScaleFormat(std::string_view name);
inline size_t ScaleBytes(ScaleFormat format) { return format == ScaleFormat::kFp32 ? 4 : 1; }

// e4m3 <-> fp32. EncodeE4m3 rounds to nearest even and saturates to +-448 (+-Inf included);
// NaN -> 0x7F. DecodeE4m3 is exact (0x7F / 0xFF decode to NaN).
uint8_t EncodeE4m3(float value);
float DecodeE4m3(uint8_t code);

// Step 2 of the rule above: the divisor of a block with this amax.
float Fp32ScaleFromAmax(float amax);
uint8_t Ue8m0FromAmax(float amax);
float Ue8m0ToFloat(uint8_t byte);  // 2^(byte - 127); byte 0 gives 2^-127

// Quantizes one row of `hidden` bf16 values (hidden % 128 == 0) into `q` [hidden] e4m3 and
// `scales` [hidden / 128] (fp32 or ue8m0 bytes, per `format`).
void QuantizeRowE4m3(const uint16_t* bf16_row, int hidden, ScaleFormat format, uint8_t* q,
                     void* scales);

}  // namespace epd
