// Private: turns a CUDA runtime / driver error into a Status naming the call, the error and
// the place (STYLE.md: check every foreign call with the detail).
#pragma once

#include <cuda.h>
#include <cuda_runtime_api.h>

#include "common/status.h"

#define EPD_CLIENT_CUDA_CHECK(call)                                                         \
  do {                                                                                      \
    const cudaError_t epd_err_ = (call);                                                    \
    if (epd_err_ != cudaSuccess) {                                                          \
      return ::epd::InternalError("{} failed: {} ({}) at {}:{}", #call,                     \
                                  cudaGetErrorName(epd_err_), cudaGetErrorString(epd_err_), \
                                  __FILE__, __LINE__);                                      \
    }                                                                                       \
  } while (0)

// Calls `driver->fn(args...)` on the ClientDriverApi `driver` (see cuda_driver.h).
#define EPD_CLIENT_CU_CHECK(driver, fn, ...)                                                   \
  do {                                                                                         \
    const CUresult epd_res_ = (driver)->fn(__VA_ARGS__);                                       \
    if (epd_res_ != CUDA_SUCCESS) {                                                            \
      const char* epd_name_ = "?";                                                             \
      (driver)->get_error_name(epd_res_, &epd_name_);                                          \
      return ::epd::InternalError("{} failed: {} at {}:{}", #fn, epd_name_, __FILE__, __LINE__); \
    }                                                                                          \
  } while (0)
