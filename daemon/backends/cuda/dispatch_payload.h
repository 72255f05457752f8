// The row payload of a cuda dispatch: which of the kernel's payloads (copy, quantize to fp8,
// copy pre-quantized fp8) this rank's input selects, after checking that input.
#pragma once

#include "common/status.h"
#include "daemon/core/backend.h"
#include "kernels/dispatch.cuh"

namespace epd::cuda {

// Checks x (and x_scales) of n tokens against the group, as the core does for requests, and
// sets params' payload, x, x_scales, row_bytes, hidden and ue8m0_scales. Errors name the field.
Status SetDispatchPayload(const GroupConfig& config, const DispatchArgs& args, int n,
                          kernels::DispatchParams* params);

}  // namespace epd::cuda
