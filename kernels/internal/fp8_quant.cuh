// Device side of FP8 e4m3 quantization per 128-channel block: bit-exact to the host reference
// in common/fp8.h, whose comment states the rule. How each step stays exact:
//  - amax: fmaxf over fabsf of finite values is exact and order-free;
//  - s = amax / 448 and q = v / scale use __fdiv_rn (IEEE division, round to nearest even),
//    never an approximate reciprocal (ue8m0 multiplies by the exact reciprocal of its power
//    of two instead: the same correctly rounded quotient); the kernels build with
//    --fmad=false and no fast-math, and nothing here could contract into an FMA anyway;
//  - ue8m0 rounds s up to a power of two on its bit pattern, as the host does;
//  - NaN is mapped to 0x7F before conversion and every other value is clamped to +-448 first,
//    so the cvt (__nv_cvt_float_to_fp8 with __NV_SATFINITE: round to nearest even, e4m3
//    subnormals, signed zero) never sees an infinity or an out-of-range value.
#pragma once

#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace epd::kernels::detail {

constexpr int kFp8BlockChannels = 128;
constexpr uint8_t kE4m3NaN = 0x7F;
constexpr uint32_t kUe8m0One = 127;

__device__ __forceinline__ uint8_t EncodeE4m3(float value) {
  if (isnan(value)) return kE4m3NaN;
  const float clamped = fminf(fmaxf(value, -448.0f), 448.0f);
  return static_cast<uint8_t>(__nv_cvt_float_to_fp8(clamped, __NV_SATFINITE, __NV_E4M3));
}

__device__ __forceinline__ float Fp32ScaleFromAmax(float amax) {
  return amax > 0.0f ? __fdiv_rn(amax, 448.0f) : 1.0f;
}

__device__ __forceinline__ uint32_t Ue8m0FromAmax(float amax) {
  if (!(amax > 0.0f)) return kUe8m0One;
  const uint32_t bits = __float_as_uint(__fdiv_rn(amax, 448.0f));
  uint32_t exponent = bits >> 23;
  if ((bits & 0x7FFFFFu) != 0) ++exponent;
  return exponent < 1 ? 1 : exponent;
}

__device__ __forceinline__ float BitsOfBf16(uint32_t bf16) { return __uint_as_float(bf16 << 16); }

// What one lane of a half warp holds of a quantized 128-channel block: its 8 e4m3 codes and
// the block's scale (fp32 bits, or the ue8m0 byte), so a caller can store it to several rows.
struct QuantizedBlockPiece {
  uint2 q = make_uint2(0, 0);
  uint32_t scale = 0;
};

// A lane's 8 bf16 channels of a block (16 bytes), loaded apart from the arithmetic so that a
// caller can issue the load before other dependent loads of its own.
__device__ __forceinline__ int4 LoadBlockPiece(const uint16_t* src_block, bool valid, int lane16) {
  return valid ? *reinterpret_cast<const int4*>(src_block + lane16 * 8) : make_int4(0, 0, 0, 0);
}

// Half a warp (16 lanes x 8 channels) quantizes one 128-channel block of a bf16 row, each lane
// from its LoadBlockPiece, into registers. `lane16` is the lane within the half warp; every
// lane of the warp must call this (the reduction shuffles across the full warp), with `valid`
// false where there is no block.
__device__ __forceinline__ QuantizedBlockPiece QuantizeLoadedBlockPiece(int4 raw, bool ue8m0,
                                                                        bool valid) {
  QuantizedBlockPiece piece;
  float v[8];
  float amax = 0.0f;
  if (valid) {
    const uint32_t words[4] = {static_cast<uint32_t>(raw.x), static_cast<uint32_t>(raw.y),
                               static_cast<uint32_t>(raw.z), static_cast<uint32_t>(raw.w)};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      v[2 * i] = BitsOfBf16(words[i] & 0xFFFFu);  // little endian: element 2i is the low half
      v[2 * i + 1] = BitsOfBf16(words[i] >> 16);
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      if (isfinite(v[i])) amax = fmaxf(amax, fabsf(v[i]));
    }
  }
#pragma unroll
  for (int offset = 8; offset > 0; offset >>= 1) {
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));  // stays in the half warp
  }
  if (!valid) return piece;
  uint32_t packed[2] = {0, 0};
  if (ue8m0) {
    const uint32_t byte = Ue8m0FromAmax(amax);  // in [1, 247]
    piece.scale = byte;
    // NOTE: v / 2^(byte-127) == v * 2^(127-byte) exactly: the reciprocal of a power of two is
    // exact (biased exponent 254 - byte in [7, 253]), and both operations round the same exact
    // quotient once. Multiplying spares the division. (An fp32 scale has no exact reciprocal
    // in general, so it keeps the division.)
    const float inverse = __uint_as_float((254u - byte) << 23);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      packed[i / 4] |= static_cast<uint32_t>(EncodeE4m3(__fmul_rn(v[i], inverse))) << (8 * (i % 4));
    }
  } else {
    const float scale = Fp32ScaleFromAmax(amax);
    piece.scale = __float_as_uint(scale);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      packed[i / 4] |= static_cast<uint32_t>(EncodeE4m3(__fdiv_rn(v[i], scale))) << (8 * (i % 4));
    }
  }
  piece.q = make_uint2(packed[0], packed[1]);
  return piece;
}

// Stores a lane's piece: its 8 codes into the block's row bytes, the scale from lane 0.
__device__ __forceinline__ void StoreBlockPiece(const QuantizedBlockPiece& piece,
                                                uint8_t* dst_block, void* dst_scale, bool ue8m0,
                                                int lane16) {
  if (lane16 == 0) {
    if (ue8m0) {
      *static_cast<uint8_t*>(dst_scale) = static_cast<uint8_t>(piece.scale);
    } else {
      *static_cast<uint32_t*>(dst_scale) = piece.scale;
    }
  }
  *reinterpret_cast<uint2*>(dst_block + lane16 * 8) = piece.q;
}

// Quantizes one block and stores it (a half warp per block; see QuantizeLoadedBlockPiece).
__device__ __forceinline__ void QuantizeBlockHalfWarp(const uint16_t* src_block, uint8_t* dst_block,
                                                      void* dst_scale, bool ue8m0, bool valid,
                                                      int lane16) {
  const QuantizedBlockPiece piece =
      QuantizeLoadedBlockPiece(LoadBlockPiece(src_block, valid, lane16), ue8m0, valid);
  if (valid) StoreBlockPiece(piece, dst_block, dst_scale, ue8m0, lane16);
}

}  // namespace epd::kernels::detail
