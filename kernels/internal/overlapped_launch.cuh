// Programmatic dependent launch between the kernels of one stream: an op kernel launched with
// LaunchOverlapped(overlap = true) may become resident as soon as the kernel before it signals
// LetNextKernelLaunch() (the fence-wait kernel does once it saw its fence), and then waits in
// AwaitPriorKernel() until that kernel completed and its memory is visible. So an op behind a
// fence starts without paying a whole kernel launch after the fence opens. Only the daemon's
// streams have fence-wait kernels: frontend-launched ops (which CUDA graphs capture) launch
// as ordinary kernels (overlap = false), where AwaitPriorKernel returns at once.
// Included by the kernels' .cu files.
#pragma once

#include <cuda_runtime.h>

#include <utility>

namespace epd::kernels::detail {

// Every kernel launched with LaunchOverlapped calls this before its first memory access.
__device__ __forceinline__ void AwaitPriorKernel() {
  asm volatile("griddepcontrol.wait;" ::: "memory");
}

// The next kernel on the stream, if launched with LaunchOverlapped, may start launching now.
__device__ __forceinline__ void LetNextKernelLaunch() {
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

template <typename... KernelArgs, typename... Args>
cudaError_t LaunchOverlapped(bool overlap, void (*kernel)(KernelArgs...), dim3 grid, dim3 block,
                             size_t shared_bytes, cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = overlap ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

}  // namespace epd::kernels::detail
