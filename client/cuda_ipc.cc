// CUDA IPC for the client: exporting frontend tensors and opening daemon-exported regions.
#include <cuda.h>
#include <cuda_runtime_api.h>

#include <cstring>

#include "client/cuda_region.h"
#include "common/gpu_uuid.h"
#include "client/epd/cuda.h"
#include "common/cuda_check.h"
#include "common/cuda_driver.h"

namespace epd {
namespace {

// An opened cudaIpcMemHandle_t; closed (never freed: the exporter owns it) on destruction.
class CudaIpcRegion : public MappedRegion {
 public:
  CudaIpcRegion(void* base, size_t offset, size_t size, int device)
      : base_(base), offset_(offset), size_(size), device_(device) {}
  ~CudaIpcRegion() override {
    int previous = 0;
    if (cudaGetDevice(&previous) != cudaSuccess) previous = device_;
    cudaSetDevice(device_);
    cudaIpcCloseMemHandle(base_);  // nothing to report to at destruction
    cudaSetDevice(previous);
  }
  void* data() const override { return static_cast<char*>(base_) + offset_; }
  size_t size() const override { return size_; }
  bool on_device() const override { return true; }

 private:
  void* base_;
  size_t offset_;
  size_t size_;
  int device_;
};

}  // namespace

StatusOr<std::unique_ptr<MappedRegion>> OpenCudaIpcRegion(const v1::MemorySource& source) {
  cudaIpcMemHandle_t handle;
  if (source.cuda_ipc_handle().size() != sizeof(handle)) {
    return InvalidArgumentError("cuda_ipc_handle has {} bytes, expected {}",
                                source.cuda_ipc_handle().size(), sizeof(handle));
  }
  std::memcpy(&handle, source.cuda_ipc_handle().data(), sizeof(handle));
  int previous = 0;
  EPD_CUDA_CHECK(cudaGetDevice(&previous));
  EPD_CUDA_CHECK(cudaSetDevice(source.device()));
  void* base = nullptr;
  const cudaError_t err = cudaIpcOpenMemHandle(&base, handle, cudaIpcMemLazyEnablePeerAccess);
  cudaSetDevice(previous);
  EPD_CUDA_CHECK(err);
  return std::unique_ptr<MappedRegion>(
      new CudaIpcRegion(base, source.offset(), source.size(), source.device()));
}

namespace cuda {

StatusOr<v1::MemorySource> ExportDeviceTensor(const void* ptr, size_t bytes) {
  cudaPointerAttributes attributes{};
  EPD_CUDA_CHECK(cudaPointerGetAttributes(&attributes, ptr));
  if (attributes.type != cudaMemoryTypeDevice) {
    return InvalidArgumentError("pointer {} is not device memory (cudaMemoryType {})", ptr,
                                static_cast<int>(attributes.type));
  }
  CUdeviceptr base = 0;
  size_t allocation_bytes = 0;
  EPD_ASSIGN_OR_RETURN(const DriverApi* driver, Driver());
  EPD_CU_CHECK(
      driver->mem_get_address_range(&base, &allocation_bytes, reinterpret_cast<CUdeviceptr>(ptr)));
  const size_t offset = reinterpret_cast<CUdeviceptr>(ptr) - base;
  if (offset + bytes > allocation_bytes) {
    return InvalidArgumentError("tensor [{}, +{}) runs past its allocation of {} bytes", ptr, bytes,
                                allocation_bytes);
  }
  cudaIpcMemHandle_t handle;
  EPD_CUDA_CHECK(cudaIpcGetMemHandle(&handle, reinterpret_cast<void*>(base)));
  v1::MemorySource source;
  source.set_cuda_ipc_handle(std::string(reinterpret_cast<const char*>(&handle), sizeof(handle)));
  source.set_device(attributes.device);
  cudaDeviceProp prop{};
  EPD_CUDA_CHECK(cudaGetDeviceProperties(&prop, attributes.device));
  source.set_device_uuid(FormatGpuUuid(prop.uuid.bytes));
  source.set_offset(offset);
  source.set_size(bytes);
  return source;
}

}  // namespace cuda
}  // namespace epd
