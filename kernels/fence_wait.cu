#include "kernels/fence_wait.cuh"
#include "kernels/internal/device_sync.cuh"
#include "kernels/internal/overlapped_launch.cuh"
#include "kernels/internal/preload.cuh"

namespace epd::kernels {
namespace {

__global__ void FenceWaitKernel(const uint64_t* counter, uint64_t value, uint64_t timeout_ns,
                                const uint64_t* abort, uint64_t abort_at, DeviceError* error) {
  uint64_t seen = 0;
  const int why =
      detail::WaitFlagAtLeast(counter, value, timeout_ns, &seen, nullptr, 0, abort, abort_at);
  // The op behind the fence may start launching while this kernel writes its record and ends.
  detail::LetNextKernelLaunch();
  if (why != detail::kWaitOk) {
    error->a = error->b = error->c = 0;
    error->value = static_cast<int64_t>(value);
    error->value2 = static_cast<int64_t>(seen);
    error->code = why == detail::kWaitAborted ? kDeviceErrorAborted : kDeviceErrorFenceTimeout;
  }
}

}  // namespace

cudaError_t LaunchFenceWait(const uint64_t* counter, uint64_t value, uint64_t timeout_ns,
                            const uint64_t* abort, uint64_t abort_at, DeviceError* error,
                            cudaStream_t stream) {
  FenceWaitKernel<<<1, 1, 0, stream>>>(counter, value, timeout_ns, abort, abort_at, error);
  return cudaGetLastError();
}

namespace detail {

cudaError_t PreloadFenceWaitKernels() {
  return LoadKernel(reinterpret_cast<const void*>(&FenceWaitKernel));
}

}  // namespace detail
}  // namespace epd::kernels
