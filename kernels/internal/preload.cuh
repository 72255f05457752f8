// Host-side: each kernel file's loader, called by PreloadKernels (kernels/preload.cuh).
#pragma once

#include <cuda_runtime.h>

namespace epd::kernels::detail {

cudaError_t PreloadRoutingKernels();
cudaError_t PreloadDispatchKernels();
cudaError_t PreloadHtDispatchKernels();
cudaError_t PreloadCombineKernels();
cudaError_t PreloadFenceWaitKernels();
cudaError_t PreloadAbandonKernels();
cudaError_t PreloadSpanDispatchKernels();
cudaError_t PreloadSpanCombineKernels();

// cudaFuncGetAttributes needs the function loaded in the current context, so it loads it.
inline cudaError_t LoadKernel(const void* kernel) {
  cudaFuncAttributes attributes;
  return cudaFuncGetAttributes(&attributes, kernel);
}

}  // namespace epd::kernels::detail
