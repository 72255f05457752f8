#include "common/cuda_check.h"

#include <cstring>
#include <string_view>

#include "common/cuda_driver.h"

namespace epd::cuda {
namespace {

const char* BaseName(const char* file) {
  const char* slash = std::strrchr(file, '/');
  return slash != nullptr ? slash + 1 : file;
}

}  // namespace

Status CudaStatus(cudaError_t error, const char* expr, const char* file, int line) {
  cudaGetLastError();  // the failed call's error, so the next launch check does not see it
  // What survives the clear cannot be cleared: the runtime never initialised, or the context
  // is lost. Every later call fails with it, so say so once here.
  const cudaError_t remaining = cudaPeekAtLastError();
  std::string_view note;
  if (remaining == cudaErrorInsufficientDriver || remaining == cudaErrorNoDevice) {
    note = "; no usable CUDA driver or device";
  } else if (remaining != cudaSuccess) {
    note = "; the CUDA context is lost (sticky error), restart the process";
  }
  const StatusCode code =
      error == cudaErrorMemoryAllocation ? StatusCode::kResourceExhausted : StatusCode::kInternal;
  return Status(code, fmt::format("{} failed: {} ({}) at {}:{}{}", expr, cudaGetErrorName(error),
                                  cudaGetErrorString(error), BaseName(file), line, note));
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

}  // namespace epd::cuda
