#include "daemon/backends/cuda/cuda_check.h"

#include <cstring>

#include "daemon/backends/cuda/driver_api.h"

namespace epd::cuda {
namespace {

const char* BaseName(const char* file) {
  const char* slash = std::strrchr(file, '/');
  return slash != nullptr ? slash + 1 : file;
}

}  // namespace

Status CudaStatus(cudaError_t error, const char* expr, const char* file, int line) {
  const StatusCode code =
      error == cudaErrorMemoryAllocation ? StatusCode::kResourceExhausted : StatusCode::kInternal;
  return Status(code, fmt::format("{} failed: {} ({}) at {}:{}", expr, cudaGetErrorName(error),
                                  cudaGetErrorString(error), BaseName(file), line));
}

Status CuStatus(CUresult result, const char* expr, const char* file, int line) {
  const char* name = "unknown";
  const char* text = "unknown";
  if (auto driver = Driver(); driver.ok()) {
    (*driver)->get_error_name(result, &name);
    (*driver)->get_error_string(result, &text);
  }
  const StatusCode code =
      result == CUDA_ERROR_OUT_OF_MEMORY ? StatusCode::kResourceExhausted : StatusCode::kInternal;
  return Status(code,
                fmt::format("{} failed: {} ({}) at {}:{}", expr, name, text, BaseName(file), line));
}

Status NcclStatus(ncclResult_t result, const char* expr, const char* file, int line) {
  return Status(
      StatusCode::kInternal,
      fmt::format("{} failed: ncclResult {} ({}) at {}:{}", expr, static_cast<int>(result),
                  ncclGetErrorString(result), BaseName(file), line));
}

}  // namespace epd::cuda
