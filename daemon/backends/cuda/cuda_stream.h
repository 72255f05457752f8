// CudaStream: owns one non-blocking stream on one device (destroyed on that device).
#pragma once

#include <cuda_runtime.h>

#include <memory>

#include "common/cuda_check.h"
#include "daemon/core/log.h"

namespace epd::cuda {

class CudaStream {
 public:
  static StatusOr<std::unique_ptr<CudaStream>> Create(int device) {
    EPD_CUDA_CHECK(cudaSetDevice(device));
    cudaStream_t stream = nullptr;
    EPD_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    return std::unique_ptr<CudaStream>(new CudaStream(device, stream));
  }
  ~CudaStream() {
    cudaSetDevice(device_);
    if (cudaError_t e = cudaStreamDestroy(stream_); e != cudaSuccess) {
      EPD_LOG(kCuda, warn, "cudaStreamDestroy on GPU {}: {}", device_, cudaGetErrorString(e));
    }
  }
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;

  cudaStream_t get() const { return stream_; }
  int device() const { return device_; }

 private:
  CudaStream(int device, cudaStream_t stream) : device_(device), stream_(stream) {}
  int device_;
  cudaStream_t stream_;
};

}  // namespace epd::cuda
