#include "kernels/internal/preload.cuh"
#include "kernels/preload.cuh"

namespace epd::kernels {

cudaError_t PreloadKernels() {
  for (cudaError_t (*load)() :
       {detail::PreloadRoutingKernels, detail::PreloadDispatchKernels,
        detail::PreloadHtDispatchKernels, detail::PreloadCombineKernels,
        detail::PreloadFenceWaitKernels, detail::PreloadAbandonKernels,
        detail::PreloadSpanDispatchKernels, detail::PreloadSpanCombineKernels}) {
    if (const cudaError_t e = load(); e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

}  // namespace epd::kernels
