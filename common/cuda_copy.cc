#include "common/cuda_copy.h"

#include <cuda_runtime_api.h>

#include "common/cuda_check.h"
#include "common/cuda_device.h"

namespace epd::cuda {
namespace {

// The GPU that holds `a` or else `b`; the current one when neither is device memory.
StatusOr<int> DeviceOf(const void* a, const void* b) {
  for (const void* p : {a, b}) {
    cudaPointerAttributes attributes{};
    EPD_CUDA_CHECK(cudaPointerGetAttributes(&attributes, p));
    if (attributes.type == cudaMemoryTypeDevice || attributes.type == cudaMemoryTypeManaged) {
      return attributes.device;
    }
  }
  int current = 0;
  EPD_CUDA_CHECK(cudaGetDevice(&current));
  return current;
}

// Runs `enqueue` on a new non-blocking stream of `device` and waits for it; the stream is
// destroyed whatever happens.
template <typename Enqueue>
Status RunOnPrivateStream(int device, Enqueue enqueue) {
  return OnDevice(device, [&]() -> Status {
    cudaStream_t stream = nullptr;
    EPD_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    auto work = [&]() -> Status {
      EPD_RETURN_IF_ERROR(enqueue(stream));
      EPD_CUDA_CHECK(cudaStreamSynchronize(stream));
      return OkStatus();
    };
    Status status = work();
    const cudaError_t destroyed = cudaStreamDestroy(stream);
    if (status.ok() && destroyed != cudaSuccess) {
      status = CudaStatus(destroyed, "cudaStreamDestroy(stream)", __FILE__, __LINE__);
    }
    return status;
  });
}

}  // namespace

Status CopyNow(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return OkStatus();
  EPD_ASSIGN_OR_RETURN(const int device, DeviceOf(dst, src));
  return RunOnPrivateStream(device, [&](cudaStream_t stream) -> Status {
    EPD_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream));
    return OkStatus();
  });
}

Status FillNow(void* device, uint8_t value, size_t bytes) {
  if (bytes == 0) return OkStatus();
  EPD_ASSIGN_OR_RETURN(const int gpu, DeviceOf(device, device));
  return RunOnPrivateStream(gpu, [&](cudaStream_t stream) -> Status {
    EPD_CUDA_CHECK(cudaMemsetAsync(device, value, bytes, stream));
    return OkStatus();
  });
}

}  // namespace epd::cuda
