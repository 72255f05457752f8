// The few CUDA driver calls that daemon and client need, resolved once through the runtime
// (cudaGetDriverEntryPointByVersion) instead of linking libcuda: every binary, static CUDA
// runtime included, then starts on a machine without a GPU driver (CI), where GPU work
// reports UNAVAILABLE and the GPU tests skip.
#pragma once

#include <cuda.h>

#include "common/status.h"

namespace epd::cuda {

struct DriverApi {
  CUresult (*get_error_name)(CUresult, const char**) = nullptr;
  CUresult (*get_error_string)(CUresult, const char**) = nullptr;
  CUresult (*mem_get_address_range)(CUdeviceptr*, size_t*, CUdeviceptr) = nullptr;
  CUresult (*stream_write_value64)(CUstream, CUdeviceptr, cuuint64_t, unsigned int) = nullptr;
  CUresult (*stream_wait_value64)(CUstream, CUdeviceptr, cuuint64_t, unsigned int) = nullptr;
};

// UNAVAILABLE naming the entry point when there is no driver or it lacks one of the calls.
// Resolved on the first call; later calls return the same answer.
StatusOr<const DriverApi*> Driver();

}  // namespace epd::cuda
