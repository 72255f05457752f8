// EPD_CUDA_CHECK / EPD_CU_CHECK: turn a failed CUDA runtime or driver call into a Status that
// names the call, the API's error name and text and file:line, and return it from the
// enclosing function (returning Status or StatusOr<T>).
//
// A failed runtime call also leaves its error as the thread's "last error", which the next
// cudaGetLastError() -- the check after every kernel launch -- would report as a launch
// failure. EPD_CUDA_CHECK clears it. What cannot be cleared (a lost context, a runtime without
// driver or device) fails every later call anyway, and the Status says so.
#pragma once

#include <cuda.h>
#include <cuda_runtime_api.h>

#include "common/status.h"

namespace epd::cuda {

// RESOURCE_EXHAUSTED for out-of-memory, INTERNAL otherwise. Clears the thread's last error.
Status CudaStatus(cudaError_t error, const char* expr, const char* file, int line);
// The names come from the driver (common/cuda_driver.h) when it can be reached.
Status CuStatus(CUresult result, const char* expr, const char* file, int line);

}  // namespace epd::cuda

#define EPD_CUDA_CHECK(expr)                                                      \
  do {                                                                            \
    const cudaError_t epd_cuda_error_ = (expr);                                   \
    if (epd_cuda_error_ != cudaSuccess) {                                         \
      return ::epd::cuda::CudaStatus(epd_cuda_error_, #expr, __FILE__, __LINE__); \
    }                                                                             \
  } while (0)

#define EPD_CU_CHECK(expr)                                                     \
  do {                                                                         \
    const CUresult epd_cu_result_ = (expr);                                    \
    if (epd_cu_result_ != CUDA_SUCCESS) {                                      \
      return ::epd::cuda::CuStatus(epd_cu_result_, #expr, __FILE__, __LINE__); \
    }                                                                          \
  } while (0)
