// The few CUDA driver calls the backend needs, resolved once through the runtime
// (cudaGetDriverEntryPointByVersion) instead of linking libcuda: binaries then start on
// machines without a GPU driver (CI), where the GPU tests skip.
#pragma once

#include <cuda.h>

#include "common/status.h"

namespace epd::cuda {

struct DriverApi {
  CUresult (*get_error_name)(CUresult, const char**) = nullptr;
  CUresult (*get_error_string)(CUresult, const char**) = nullptr;
  CUresult (*mem_get_address_range)(CUdeviceptr*, size_t*, CUdeviceptr) = nullptr;
  CUresult (*stream_write_value64)(CUstream, CUdeviceptr, cuuint64_t, unsigned int) = nullptr;
};

// UNAVAILABLE when the driver lacks one of them.
StatusOr<const DriverApi*> Driver();

}  // namespace epd::cuda
