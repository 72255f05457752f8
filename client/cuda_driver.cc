#include "client/cuda_driver.h"

#include <cuda_runtime_api.h>

namespace epd::cuda {
namespace {

constexpr unsigned int kDriverApiVersion = 12000;  // ABI of these entry points

template <typename Fn>
Status Resolve(const char* symbol, Fn* fn) {
  void* address = nullptr;
  cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
  const cudaError_t error = cudaGetDriverEntryPointByVersion(symbol, &address, kDriverApiVersion,
                                                             cudaEnableDefault, &found);
  if (error != cudaSuccess || found != cudaDriverEntryPointSuccess || address == nullptr) {
    cudaGetLastError();  // clear, so later runtime calls do not report it
    return UnavailableError("CUDA driver entry point {} not found: {}", symbol,
                            cudaGetErrorString(error));
  }
  *fn = reinterpret_cast<Fn>(address);
  return OkStatus();
}

}  // namespace

StatusOr<const ClientDriverApi*> ClientDriver() {
  static ClientDriverApi api;
  static const Status status = [] {
    EPD_RETURN_IF_ERROR(Resolve("cuGetErrorName", &api.get_error_name));
    EPD_RETURN_IF_ERROR(Resolve("cuMemGetAddressRange", &api.mem_get_address_range));
    EPD_RETURN_IF_ERROR(Resolve("cuStreamWriteValue64", &api.stream_write_value64));
    EPD_RETURN_IF_ERROR(Resolve("cuStreamWaitValue64", &api.stream_wait_value64));
    return OkStatus();
  }();
  if (!status.ok()) return status;
  return &api;
}

}  // namespace epd::cuda
