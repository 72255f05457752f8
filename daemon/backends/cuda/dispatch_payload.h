// The inputs both cuda dispatch kernels share (kernels::DispatchInputs): the row payload this
// rank's input selects (copy, quantize to fp8, copy pre-quantized fp8), after checking that
// input, and the routing its handle bound.
#pragma once

#include "common/status.h"
#include "daemon/backends/cuda/cuda_objects.h"
#include "daemon/core/backend.h"
#include "kernels/dispatch.cuh"

namespace epd::cuda {

// Checks x (and x_scales) of n tokens against the group, as the core does for requests, and
// sets the inputs' payload, x, x_scales, row_bytes (of x's rows), hidden and ue8m0_scales.
// Errors name the field.
Status SetDispatchPayload(const GroupConfig& config, const DispatchArgs& args, int n,
                          kernels::DispatchInputs* inputs);
// The group's shape and the routing `handle` bound (its private buffers).
void SetDispatchRouting(const CudaHandle& handle, kernels::DispatchInputs* inputs);

}  // namespace epd::cuda
