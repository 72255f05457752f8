// The row payload of a cuda dispatch: which of the kernel's payloads (copy, quantize to fp8,
// copy pre-quantized fp8) this rank's input selects, after checking that input.
#pragma once

#include "common/status.h"
#include "daemon/core/backend.h"
#include "kernels/dispatch.cuh"
#include "kernels/ht_dispatch.cuh"

namespace epd::cuda {

// Checks x (and x_scales) of n tokens against the group, as the core does for requests, and
// sets params' payload, x, x_scales, row_bytes, hidden and ue8m0_scales. Errors name the field.
Status SetDispatchPayload(const GroupConfig& config, const DispatchArgs& args, int n,
                          kernels::DispatchParams* params);
// The same for the high-throughput dispatch; its row_bytes is a received row's (H bytes with
// the fp8 payloads, whose pre-quantized x the kernel copies as rows).
Status SetDispatchPayload(const GroupConfig& config, const DispatchArgs& args, int n,
                          kernels::HtDispatchParams* params);

}  // namespace epd::cuda
