#include "kernels/fp8_quant.cuh"
#include "kernels/internal/fp8_quant.cuh"

namespace epd::kernels {
namespace {

constexpr int kThreads = 256;

__global__ void EncodeKernel(const float* in, uint8_t* out, int64_t count) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = detail::EncodeE4m3(in[i]);
  }
}

// A warp per two 128-channel blocks (one per half warp), grid-stride over all blocks.
__global__ void QuantizeKernel(const uint16_t* x, int64_t rows, int hidden, bool ue8m0, uint8_t* q,
                               char* scales) {
  const int lane = threadIdx.x & 31;
  const int blocks_per_row = hidden / detail::kFp8BlockChannels;
  const int64_t total = rows * blocks_per_row;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kThreads / 32);
  const int scale_bytes = ue8m0 ? 1 : 4;
  for (int64_t pair = blockIdx.x * static_cast<int64_t>(kThreads / 32) + (threadIdx.x >> 5);
       pair * 2 < total; pair += warps) {
    const int64_t block = pair * 2 + (lane >> 4);
    const bool valid = block < total;
    const int64_t safe = valid ? block : pair * 2;
    detail::QuantizeBlockHalfWarp(x + safe * detail::kFp8BlockChannels,
                                  q + safe * detail::kFp8BlockChannels, scales + safe * scale_bytes,
                                  ue8m0, valid, lane & 15);
  }
}

int GridFor(int64_t items) {
  const int64_t blocks = (items + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 1 ? 1 : (blocks > 4096 ? 4096 : blocks));
}

}  // namespace

cudaError_t LaunchEncodeE4m3(const float* in, uint8_t* out, int64_t count, cudaStream_t stream) {
  EncodeKernel<<<GridFor(count), kThreads, 0, stream>>>(in, out, count);
  return cudaGetLastError();
}

cudaError_t LaunchQuantizeRowsE4m3(const void* x, int64_t rows, int hidden, bool ue8m0, void* q,
                                   void* scales, cudaStream_t stream) {
  const int64_t pairs = (rows * (hidden / detail::kFp8BlockChannels) + 1) / 2;
  QuantizeKernel<<<GridFor(pairs * 32), kThreads, 0, stream>>>(
      static_cast<const uint16_t*>(x), rows, hidden, ue8m0, static_cast<uint8_t*>(q),
      static_cast<char*>(scales));
  return cudaGetLastError();
}

}  // namespace epd::kernels
