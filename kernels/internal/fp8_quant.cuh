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

// A block is quantized by 128 / kChannels lanes, each holding kChannels consecutive channels:
// 8 (a half warp per block: the stand-alone quantize kernel) or 16 (the dispatch kernels: four
// blocks per warp, so each lane stores its codes as one 16-byte vector).
template <int kChannels>
struct RawPiece {  // a lane's kChannels bf16 channels, loaded apart from the arithmetic
  int4 v[kChannels / 8] = {};
};
template <int kChannels>
struct QuantizedPiece {  // its kChannels e4m3 codes and the block's scale (fp32 bits or ue8m0)
  uint32_t q[kChannels / 4] = {};
  uint32_t scale = 0;
};

// `lane_in_block`: the lane's place among its block's lanes. Issued apart from the arithmetic
// so that a caller can put other loads of its own in flight first.
template <int kChannels>
__device__ __forceinline__ RawPiece<kChannels> LoadPiece(const uint16_t* src_block, bool valid,
                                                        int lane_in_block) {
  RawPiece<kChannels> raw;
  if (!valid) return raw;
  const auto* src = reinterpret_cast<const int4*>(src_block + lane_in_block * kChannels);
#pragma unroll
  for (int i = 0; i < kChannels / 8; ++i) raw.v[i] = src[i];
  return raw;
}

// The lanes of one block quantize it, each from its LoadPiece, into registers. Every lane of
// the warp must call this (the amax reduction shuffles within each block's lanes), with
// `valid` false where there is no block.
template <int kChannels>
__device__ __forceinline__ QuantizedPiece<kChannels> QuantizeLoadedPiece(
    const RawPiece<kChannels>& raw, bool ue8m0, bool valid) {
  constexpr int kLanesPerBlock = kFp8BlockChannels / kChannels;
  QuantizedPiece<kChannels> piece;
  float v[kChannels];
  float amax = 0.0f;
  if (valid) {
#pragma unroll
    for (int i = 0; i < kChannels / 8; ++i) {
      const int4 vec = raw.v[i];
      const uint32_t words[4] = {static_cast<uint32_t>(vec.x), static_cast<uint32_t>(vec.y),
                                 static_cast<uint32_t>(vec.z), static_cast<uint32_t>(vec.w)};
#pragma unroll
      for (int w = 0; w < 4; ++w) {
        v[8 * i + 2 * w] = BitsOfBf16(words[w] & 0xFFFFu);  // little endian: the low half first
        v[8 * i + 2 * w + 1] = BitsOfBf16(words[w] >> 16);
      }
    }
#pragma unroll
    for (int i = 0; i < kChannels; ++i) {
      if (isfinite(v[i])) amax = fmaxf(amax, fabsf(v[i]));
    }
  }
#pragma unroll
  for (int offset = kLanesPerBlock / 2; offset > 0; offset >>= 1) {
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));  // stays in the block's lanes
  }
  if (!valid) return piece;
  if (ue8m0) {
    const uint32_t byte = Ue8m0FromAmax(amax);  // in [1, 247]
    piece.scale = byte;
    // NOTE: v / 2^(byte-127) == v * 2^(127-byte) exactly: the reciprocal of a power of two is
    // exact (biased exponent 254 - byte in [7, 253]), and both operations round the same exact
    // quotient once. Multiplying spares the division. (An fp32 scale has no exact reciprocal
    // in general, so it keeps the division.)
    const float inverse = __uint_as_float((254u - byte) << 23);
#pragma unroll
    for (int i = 0; i < kChannels; ++i) {
      const uint32_t code = EncodeE4m3(__fmul_rn(v[i], inverse));
      piece.q[i / 4] |= code << (8 * (i % 4));
    }
  } else {
    const float scale = Fp32ScaleFromAmax(amax);
    piece.scale = __float_as_uint(scale);
#pragma unroll
    for (int i = 0; i < kChannels; ++i) {
      const uint32_t code = EncodeE4m3(__fdiv_rn(v[i], scale));
      piece.q[i / 4] |= code << (8 * (i % 4));
    }
  }
  return piece;
}

// Stores a lane's piece: its codes into the block's row bytes, the scale from the block's
// first lane.
template <int kChannels>
__device__ __forceinline__ void StorePiece(const QuantizedPiece<kChannels>& piece,
                                           uint8_t* dst_block, void* dst_scale, bool ue8m0,
                                           int lane_in_block) {
  if (lane_in_block == 0) {
    if (ue8m0) {
      *static_cast<uint8_t*>(dst_scale) = static_cast<uint8_t>(piece.scale);
    } else {
      *static_cast<uint32_t*>(dst_scale) = piece.scale;
    }
  }
  uint8_t* dst = dst_block + lane_in_block * kChannels;
  if constexpr (kChannels == 16) {
    *reinterpret_cast<uint4*>(dst) = make_uint4(piece.q[0], piece.q[1], piece.q[2], piece.q[3]);
  } else {
    static_assert(kChannels == 8, "8 or 16 channels per lane");
    *reinterpret_cast<uint2*>(dst) = make_uint2(piece.q[0], piece.q[1]);
  }
}

// Quantizes one block and stores it (a half warp per block; see QuantizeLoadedPiece).
__device__ __forceinline__ void QuantizeBlockHalfWarp(const uint16_t* src_block, uint8_t* dst_block,
                                                      void* dst_scale, bool ue8m0, bool valid,
                                                      int lane16) {
  const QuantizedPiece<8> piece =
      QuantizeLoadedPiece<8>(LoadPiece<8>(src_block, valid, lane16), ue8m0, valid);
  if (valid) StorePiece(piece, dst_block, dst_scale, ue8m0, lane16);
}

}  // namespace epd::kernels::detail
