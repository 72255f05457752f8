// CudaEvent: owns one timing-free event on one device. Blocking sync, so a completion thread
// waiting on it sleeps instead of spinning a core.
#pragma once

#include <cuda_runtime.h>

#include <memory>

#include "common/cuda_check.h"
#include "daemon/core/log.h"

namespace epd::cuda {

class CudaEvent {
 public:
  static StatusOr<std::unique_ptr<CudaEvent>> Create(int device) {
    EPD_CUDA_CHECK(cudaSetDevice(device));
    cudaEvent_t event = nullptr;
    EPD_CUDA_CHECK(
        cudaEventCreateWithFlags(&event, cudaEventDisableTiming | cudaEventBlockingSync));
    return std::unique_ptr<CudaEvent>(new CudaEvent(device, event));
  }
  ~CudaEvent() {
    if (cudaError_t e = cudaEventDestroy(event_); e != cudaSuccess) {
      EPD_LOG(kCuda, warn, "cudaEventDestroy on GPU {}: {}", device_, cudaGetErrorString(e));
    }
  }
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;

  cudaEvent_t get() const { return event_; }
  int device() const { return device_; }

 private:
  CudaEvent(int device, cudaEvent_t event) : device_(device), event_(event) {}
  int device_;
  cudaEvent_t event_;
};

}  // namespace epd::cuda
