#include "daemon/backends/cuda/driver_api.h"

#include <cuda_runtime.h>

#include <mutex>

namespace epd::cuda {
namespace {

constexpr unsigned int kDriverApiVersion = 12000;  // the ABI of these entry points

template <typename Fn>
Status Resolve(const char* symbol, Fn* fn) {
  void* address = nullptr;
  cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
  const cudaError_t e = cudaGetDriverEntryPointByVersion(symbol, &address, kDriverApiVersion,
                                                         cudaEnableDefault, &found);
  if (e != cudaSuccess || found != cudaDriverEntryPointSuccess || address == nullptr) {
    cudaGetLastError();
    return UnavailableError("CUDA driver entry point {} not found: {}", symbol,
                            cudaGetErrorString(e));
  }
  *fn = reinterpret_cast<Fn>(address);
  return OkStatus();
}

}  // namespace

StatusOr<const DriverApi*> Driver() {
  static DriverApi api;
  static Status status = [] {
    EPD_RETURN_IF_ERROR(Resolve("cuGetErrorName", &api.get_error_name));
    EPD_RETURN_IF_ERROR(Resolve("cuGetErrorString", &api.get_error_string));
    EPD_RETURN_IF_ERROR(Resolve("cuMemGetAddressRange", &api.mem_get_address_range));
    EPD_RETURN_IF_ERROR(Resolve("cuStreamWriteValue64", &api.stream_write_value64));
    return OkStatus();
  }();
  if (!status.ok()) return status;
  return &api;
}

}  // namespace epd::cuda
