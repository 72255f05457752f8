// EPD_NCCL_CHECK: turns a failed NCCL call into an INTERNAL Status naming the call, NCCL's
// error and file:line, and returns it (the NCCL counterpart of common/cuda_check.h).
#pragma once

#include <nccl.h>

#include <cstring>

#include "common/status.h"

namespace epd::cuda {

inline Status NcclStatus(ncclResult_t result, const char* expr, const char* file, int line) {
  const char* slash = std::strrchr(file, '/');
  return InternalError("{} failed: ncclResult {} ({}) at {}:{}", expr, static_cast<int>(result),
                       ncclGetErrorString(result), slash != nullptr ? slash + 1 : file, line);
}

}  // namespace epd::cuda

#define EPD_NCCL_CHECK(expr)                                                       \
  do {                                                                             \
    const ncclResult_t epd_nccl_result_ = (expr);                                  \
    if (epd_nccl_result_ != ncclSuccess) {                                         \
      return ::epd::cuda::NcclStatus(epd_nccl_result_, #expr, __FILE__, __LINE__); \
    }                                                                              \
  } while (0)
