#include "daemon/backends/cuda/ipc_mapping.h"

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstring>

#include "common/cuda_check.h"
#include "common/cuda_driver.h"
#include "daemon/core/log.h"

namespace epd::cuda {

StatusOr<std::shared_ptr<IpcMapping>> IpcMapping::Open(const std::string& handle, int device,
                                                       Reclaimer& reclaimer) {
  if (handle.size() != sizeof(cudaIpcMemHandle_t)) {
    return InvalidArgumentError("source.cuda_ipc_handle has {} bytes, expected {}", handle.size(),
                                sizeof(cudaIpcMemHandle_t));
  }
  cudaIpcMemHandle_t ipc;
  std::memcpy(&ipc, handle.data(), sizeof(ipc));
  EPD_ASSIGN_OR_RETURN(const DriverApi* driver, Driver());
  EPD_CUDA_CHECK(cudaSetDevice(device));
  void* base = nullptr;
  if (cudaError_t e = cudaIpcOpenMemHandle(&base, ipc, cudaIpcMemLazyEnablePeerAccess);
      e != cudaSuccess) {
    cudaGetLastError();
    return InvalidArgumentError(
        "source.cuda_ipc_handle: cudaIpcOpenMemHandle on GPU {} failed: {} ({}); the handle "
        "must come from cudaIpcGetMemHandle of a live process",
        device, cudaGetErrorName(e), cudaGetErrorString(e));
  }
  CUdeviceptr range_base = 0;
  size_t range_bytes = 0;
  if (CUresult r = driver->mem_get_address_range(&range_base, &range_bytes,
                                                 reinterpret_cast<CUdeviceptr>(base));
      r != CUDA_SUCCESS) {
    cudaIpcCloseMemHandle(base);
    const char* name = "unknown";
    driver->get_error_name(r, &name);
    return InternalError("cuMemGetAddressRange of an IPC mapping on GPU {} failed: {}", device,
                         name);
  }
  // The mapping starts at the allocation's base; measure what is left from there.
  const size_t bytes = range_bytes - (reinterpret_cast<CUdeviceptr>(base) - range_base);
  EPD_LOG(kIpc, debug, "opened IPC allocation of {} bytes on GPU {}", bytes, device);
  return std::shared_ptr<IpcMapping>(
      new IpcMapping(handle, device, static_cast<char*>(base), bytes, reclaimer));
}

IpcMapping::~IpcMapping() { reclaimer_.CloseMapping(handle_, device_, base_, allocation_bytes_); }

StatusOr<std::shared_ptr<IpcMapping>> ImportCache::Get(const std::string& handle, int device) {
  std::lock_guard<std::mutex> lock(mu_);
  auto key = std::make_pair(handle, device);
  if (auto it = mappings_.find(key); it != mappings_.end()) {
    if (auto mapping = it->second.lock()) return mapping;
  }
  std::shared_ptr<IpcMapping> mapping;
  if (auto pending = reclaimer_.Revive(handle, device)) {
    mapping.reset(new IpcMapping(handle, device, pending->first, pending->second, reclaimer_));
  } else {
    EPD_ASSIGN_OR_RETURN(mapping, IpcMapping::Open(handle, device, reclaimer_));
  }
  mappings_[key] = mapping;
  // Forget entries whose mappings are gone, so the map does not grow without bound.
  for (auto it = mappings_.begin(); it != mappings_.end();) {
    it = it->second.expired() ? mappings_.erase(it) : std::next(it);
  }
  return mapping;
}

}  // namespace epd::cuda
