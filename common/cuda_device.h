// OnDevice: runs a body with a GPU current, then makes the caller's device current again.
#pragma once

#include <cuda_runtime_api.h>

#include "common/cuda_check.h"
#include "common/status.h"

namespace epd::cuda {

// `body` returns Status. Its error wins; else a failure to restore the caller's device.
template <typename Body>
Status OnDevice(int device, Body&& body) {
  int previous = 0;
  EPD_CUDA_CHECK(cudaGetDevice(&previous));
  if (previous == device) return body();
  EPD_CUDA_CHECK(cudaSetDevice(device));
  Status status = body();
  const cudaError_t restored = cudaSetDevice(previous);
  if (status.ok() && restored != cudaSuccess) {
    status = CudaStatus(restored, "cudaSetDevice(previous)", __FILE__, __LINE__);
  }
  return status;
}

}  // namespace epd::cuda
