// Fence stream ops: stream-ordered 64-bit writes / waits, capturable in CUDA graphs.
#include <cuda.h>

#include "client/epd/cuda.h"
#include "common/cuda_check.h"
#include "common/cuda_driver.h"

namespace epd::cuda {
namespace {

Status CheckDeviceFence(const Fence& fence) {
  if (!fence.on_device()) {
    return FailedPreconditionError("fence {} lives in host memory: use Fence::Signal / Fence::Wait",
                                   fence.id());
  }
  return OkStatus();
}

}  // namespace

Status SignalFenceOnStream(const Fence& fence, uint64_t value, cudaStream_t stream) {
  EPD_RETURN_IF_ERROR(CheckDeviceFence(fence));
  EPD_ASSIGN_OR_RETURN(const DriverApi* driver, Driver());
  EPD_CU_CHECK(driver->stream_write_value64(reinterpret_cast<CUstream>(stream),
                                            reinterpret_cast<CUdeviceptr>(fence.counter()), value,
                                            CU_STREAM_WRITE_VALUE_DEFAULT));
  return OkStatus();
}

Status WaitFenceOnStream(const Fence& fence, uint64_t value, cudaStream_t stream) {
  EPD_RETURN_IF_ERROR(CheckDeviceFence(fence));
  EPD_ASSIGN_OR_RETURN(const DriverApi* driver, Driver());
  EPD_CU_CHECK(driver->stream_wait_value64(reinterpret_cast<CUstream>(stream),
                                           reinterpret_cast<CUdeviceptr>(fence.counter()), value,
                                           CU_STREAM_WAIT_VALUE_GEQ));
  return OkStatus();
}

}  // namespace epd::cuda
