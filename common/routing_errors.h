// Request errors of a routing bind that both backends report with the same words: the cpu
// backend finds them on the host, the cuda backend in its routing kernel (a device error
// record turned into a Status by kernels/device_error_status.h).
#pragma once

#include <cstdint>

#include "common/status.h"

namespace epd {

// A NaN or infinite routing weight would silently poison the frontend's combine output, so
// the update is refused naming the entry: INVALID_ARGUMENT
// "topk_weights[<token>][<k>] = <value> is not a finite number".
Status NonFiniteWeightError(int token, int k, float value);

// An expert id outside [-1, experts): INVALID_ARGUMENT
// "topk_idx[<token>, <k>] = <value> is outside [-1, <experts>)".
Status BadExpertIdError(int token, int k, int64_t value, int experts);

}  // namespace epd
