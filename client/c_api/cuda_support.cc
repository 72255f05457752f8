// C API pieces that need CUDA (built when EPD_WITH_CUDA): device registration, fence stream
// ops, stream ops posted by host functions, releasing a failed op's device fence.
#include <cuda.h>
#include <cuda_runtime_api.h>

#include "client/c_api/internal.h"
#include "client/epd/cuda.h"
#include "common/cuda_check.h"
#include "common/cuda_driver.h"

namespace epd::c_api {
namespace {

cudaStream_t AsStream(void* stream) { return static_cast<cudaStream_t>(stream); }

void CUDART_CB RunPostStreamOp(void* op) { PostStreamOp(static_cast<epd_stream_op*>(op)); }

}  // namespace

StatusOr<v1::MemorySource> ExportDevice(const void* ptr, uint64_t size_bytes) {
  return cuda::ExportDeviceTensor(ptr, size_bytes);
}

Status DeviceAllocation(const void* ptr, uint64_t* base, uint64_t* size_bytes, int32_t* device) {
  cudaPointerAttributes attributes{};
  EPD_CUDA_CHECK(cudaPointerGetAttributes(&attributes, ptr));
  if (attributes.type != cudaMemoryTypeDevice) {
    return InvalidArgumentError("pointer {} is not device memory (cudaMemoryType {})", ptr,
                                static_cast<int>(attributes.type));
  }
  EPD_ASSIGN_OR_RETURN(const cuda::DriverApi* driver, cuda::Driver());
  CUdeviceptr start = 0;
  size_t bytes = 0;
  EPD_CU_CHECK(
      driver->mem_get_address_range(&start, &bytes, reinterpret_cast<CUdeviceptr>(ptr)));
  *base = static_cast<uint64_t>(start);
  *size_bytes = bytes;
  *device = attributes.device;
  return OkStatus();
}

Status SignalOnStream(const Fence& fence, uint64_t value, void* stream) {
  return cuda::SignalFenceOnStream(fence, value, AsStream(stream));
}

Status WaitOnStream(const Fence& fence, uint64_t value, void* stream) {
  return cuda::WaitFenceOnStream(fence, value, AsStream(stream));
}

Status ReleaseDeviceFence(const Fence& fence, uint64_t value) {
  int previous = 0;
  EPD_CUDA_CHECK(cudaGetDevice(&previous));
  EPD_CUDA_CHECK(cudaSetDevice(fence.source().device()));
  // NOTE: a stream of its own that does not synchronize with the legacy default stream, which
  // may be the very stream blocked on this fence.
  cudaStream_t stream = nullptr;
  cudaError_t err = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
  if (err == cudaSuccess) {
    err = cudaMemcpyAsync(fence.counter(), &value, sizeof(value), cudaMemcpyHostToDevice, stream);
    if (err == cudaSuccess) err = cudaStreamSynchronize(stream);
    cudaStreamDestroy(stream);
  }
  cudaSetDevice(previous);
  EPD_CUDA_CHECK(err);
  return OkStatus();
}

Status EnqueueStreamOp(epd_stream_op* op, void* stream) {
  const Fence& in = *op->fence_in->fence;
  const Fence& out = *op->fence_out->fence;
  EPD_CUDA_CHECK(cudaLaunchHostFunc(AsStream(stream), RunPostStreamOp, op));
  EPD_RETURN_IF_ERROR(cuda::SignalFenceOnStream(in, 1, AsStream(stream)));
  EPD_RETURN_IF_ERROR(cuda::WaitFenceOnStream(out, 1, AsStream(stream)));
  // Re-arm for the next execution: the op completed, so the daemon is done with both fences.
  EPD_RETURN_IF_ERROR(cuda::SignalFenceOnStream(out, 0, AsStream(stream)));
  return cuda::SignalFenceOnStream(in, 0, AsStream(stream));
}

}  // namespace epd::c_api
