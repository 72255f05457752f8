// Host-side: the chunked routing bind (routing_chunked.cu), which LaunchBindRouting picks for
// large n when the handle has scratch (kernels/routing_scratch.h).
#pragma once

#include <cuda_runtime.h>

#include "kernels/routing.cuh"

namespace epd::kernels::detail {

// Requires params.scratch to hold ComputeRoutingScratch(n, E, R, high_throughput).bytes.
cudaError_t LaunchBindRoutingChunked(const RoutingParams& params, cudaStream_t stream);
cudaError_t PreloadRoutingChunkedKernels();

}  // namespace epd::kernels::detail
