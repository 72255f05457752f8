#include "daemon/backends/cuda/device_memory.h"

#include <cstring>

#include "common/cuda_check.h"
#include "daemon/core/log.h"

namespace epd::cuda {

StatusOr<std::unique_ptr<DeviceMemory>> DeviceMemory::Create(int device, size_t bytes,
                                                             AllocationCounter& counter,
                                                             Reclaimer& reclaimer,
                                                             cudaStream_t stream) {
  EPD_CUDA_CHECK(cudaSetDevice(device));
  void* data = nullptr;
  cudaError_t e = cudaMalloc(&data, bytes);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // clear the (non-sticky) allocation error
    // Memory released just before may still be on its way back (reclaimer.h).
    if (reclaimer.AwaitFrees(device)) e = cudaMalloc(&data, bytes);
  }
  if (e != cudaSuccess) {
    cudaGetLastError();
    return ResourceExhaustedError("cudaMalloc of {} bytes on GPU {} failed: {}", bytes, device,
                                  cudaGetErrorString(e));
  }
  counter.OnAllocate(bytes);
  std::unique_ptr<DeviceMemory> memory(
      new DeviceMemory(device, static_cast<char*>(data), bytes, counter, reclaimer));
  EPD_CUDA_CHECK(cudaMemsetAsync(data, 0, bytes, stream));
  EPD_CUDA_CHECK(cudaStreamSynchronize(stream));
  return memory;
}

DeviceMemory::~DeviceMemory() {
  reclaimer_.FreeDevice(device_, data_);
  counter_.OnFree(size_);
}

StatusOr<std::unique_ptr<PinnedHostMemory>> PinnedHostMemory::Create(size_t bytes,
                                                                     AllocationCounter& counter,
                                                                     Reclaimer* reclaimer) {
  void* data = reclaimer != nullptr ? reclaimer->TakeHost(bytes) : nullptr;
  if (data == nullptr) {
    EPD_CUDA_CHECK(cudaHostAlloc(&data, bytes, cudaHostAllocMapped | cudaHostAllocPortable));
    std::memset(data, 0, bytes);
  }
  counter.OnAllocate(bytes);
  return std::unique_ptr<PinnedHostMemory>(new PinnedHostMemory(data, bytes, counter, reclaimer));
}

PinnedHostMemory::~PinnedHostMemory() {
  if (reclaimer_ != nullptr) {
    reclaimer_->GiveHost(data_, size_);
  } else if (cudaError_t e = cudaFreeHost(data_); e != cudaSuccess) {
    EPD_LOG(kCuda, error, "cudaFreeHost of {} bytes: {}", size_, cudaGetErrorString(e));
  }
  counter_.OnFree(size_);
}

}  // namespace epd::cuda
