#include "common/cuda_driver.h"

#include <cuda_runtime_api.h>

namespace epd::cuda {
namespace {

constexpr unsigned int kDriverApiVersion = 12000;  // the ABI of these entry points

template <typename Fn>
Status Resolve(const char* symbol, Fn* fn) {
  void* address = nullptr;
  cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
  const cudaError_t error = cudaGetDriverEntryPointByVersion(symbol, &address, kDriverApiVersion,
                                                             cudaEnableDefault, &found);
  if (error != cudaSuccess || found != cudaDriverEntryPointSuccess || address == nullptr) {
    // Without a driver the runtime records the failure as the thread's last error; clear it
    // so the caller's next cudaGetLastError() (a kernel launch check) does not report it.
    cudaGetLastError();
    return UnavailableError("CUDA driver entry point {} not found: {}", symbol,
                            cudaGetErrorString(error));
  }
  *fn = reinterpret_cast<Fn>(address);
  return OkStatus();
}

}  // namespace

StatusOr<const DriverApi*> Driver() {
  static DriverApi api;
  static const Status status = [] {
    EPD_RETURN_IF_ERROR(Resolve("cuGetErrorName", &api.get_error_name));
    EPD_RETURN_IF_ERROR(Resolve("cuGetErrorString", &api.get_error_string));
    EPD_RETURN_IF_ERROR(Resolve("cuMemGetAddressRange", &api.mem_get_address_range));
    EPD_RETURN_IF_ERROR(Resolve("cuStreamWriteValue64", &api.stream_write_value64));
    EPD_RETURN_IF_ERROR(Resolve("cuStreamWaitValue64", &api.stream_wait_value64));
    return OkStatus();
  }();
  if (!status.ok()) return status;
  return &api;
}

}  // namespace epd::cuda
