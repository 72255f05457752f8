// Private: the three CUDA driver calls the client needs, resolved through the runtime
// (cudaGetDriverEntryPointByVersion) instead of linking libcuda, so every binary that links
// the client still starts on a machine without a GPU driver (CI runs the tests there).
#pragma once

#include <cuda.h>

#include "common/status.h"

namespace epd::cuda {

struct ClientDriverApi {
  CUresult (*get_error_name)(CUresult, const char**) = nullptr;
  CUresult (*mem_get_address_range)(CUdeviceptr*, size_t*, CUdeviceptr) = nullptr;
  CUresult (*stream_write_value64)(CUstream, CUdeviceptr, cuuint64_t, unsigned int) = nullptr;
  CUresult (*stream_wait_value64)(CUstream, CUdeviceptr, cuuint64_t, unsigned int) = nullptr;
};

// UNAVAILABLE when there is no driver or it lacks one of the calls.
StatusOr<const ClientDriverApi*> ClientDriver();

}  // namespace epd::cuda
