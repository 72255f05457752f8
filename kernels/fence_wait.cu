#include "kernels/fence_wait.cuh"
#include "kernels/internal/device_sync.cuh"
#include "kernels/internal/preload.cuh"

namespace epd::kernels {
namespace {

__global__ void FenceWaitKernel(const uint64_t* counter, uint64_t value, uint64_t timeout_ns,
                                DeviceError* error) {
  uint64_t seen = 0;
  if (!detail::WaitFlagAtLeast(counter, value, timeout_ns, &seen)) {
    error->a = error->b = error->c = 0;
    error->value = static_cast<int64_t>(value);
    error->value2 = static_cast<int64_t>(seen);
    error->code = kDeviceErrorFenceTimeout;
  }
}

}  // namespace

cudaError_t LaunchFenceWait(const uint64_t* counter, uint64_t value, uint64_t timeout_ns,
                            DeviceError* error, cudaStream_t stream) {
  FenceWaitKernel<<<1, 1, 0, stream>>>(counter, value, timeout_ns, error);
  return cudaGetLastError();
}

namespace detail {

cudaError_t PreloadFenceWaitKernels() {
  return LoadKernel(reinterpret_cast<const void*>(&FenceWaitKernel));
}

}  // namespace detail
}  // namespace epd::kernels
