// EPD_CUDA_CHECK / EPD_CU_CHECK / EPD_NCCL_CHECK: turn a failed runtime, driver or NCCL call
// into a Status carrying the API's error name and text plus file:line, and return it.
// Usable in functions returning Status or StatusOr<T>.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include "common/status.h"

namespace epd::cuda {

Status CudaStatus(cudaError_t error, const char* expr, const char* file, int line);
Status CuStatus(CUresult result, const char* expr, const char* file, int line);
Status NcclStatus(ncclResult_t result, const char* expr, const char* file, int line);

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

#define EPD_NCCL_CHECK(expr)                                                       \
  do {                                                                             \
    const ncclResult_t epd_nccl_result_ = (expr);                                  \
    if (epd_nccl_result_ != ncclSuccess) {                                         \
      return ::epd::cuda::NcclStatus(epd_nccl_result_, #expr, __FILE__, __LINE__); \
    }                                                                              \
  } while (0)
