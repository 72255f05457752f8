// Element access of a 16-byte vector of token values (8 bf16 / 8 fp16 / 4 fp32), read as fp32
// and written with round-to-nearest-even: the one conversion rule of every combine kernel
// (kernels/combine.cu, kernels/span_combine.cu), matching the cpu reference.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/combine.cuh"

namespace epd::kernels::detail {

template <int kType>
struct Vec;
template <>
struct Vec<kTokenBf16> {
  static constexpr int kElems = 8;
  __device__ static float Get(const int4& v, int i) {
    const auto* h = reinterpret_cast<const __nv_bfloat16*>(&v);
    return __bfloat162float(h[i]);
  }
  __device__ static void Set(int4& v, int i, float f) {
    reinterpret_cast<__nv_bfloat16*>(&v)[i] = __float2bfloat16_rn(f);
  }
};
template <>
struct Vec<kTokenFp16> {
  static constexpr int kElems = 8;
  __device__ static float Get(const int4& v, int i) {
    return __half2float(reinterpret_cast<const __half*>(&v)[i]);
  }
  __device__ static void Set(int4& v, int i, float f) {
    reinterpret_cast<__half*>(&v)[i] = __float2half_rn(f);
  }
};
template <>
struct Vec<kTokenFp32> {
  static constexpr int kElems = 4;
  __device__ static float Get(const int4& v, int i) {
    return reinterpret_cast<const float*>(&v)[i];
  }
  __device__ static void Set(int4& v, int i, float f) { reinterpret_cast<float*>(&v)[i] = f; }
};

}  // namespace epd::kernels::detail
