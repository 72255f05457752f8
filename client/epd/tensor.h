// Small builders for the request pieces every op needs.
#pragma once

#include <cstdint>
#include <vector>

#include "epd/v1/types.pb.h"

namespace epd {

class Fence;

v1::TensorRef MakeTensorRef(uint64_t buffer_id, uint64_t offset_bytes, v1::DType dtype,
                            const std::vector<int64_t>& shape);

// The daemon answers only after the op completed on the device.
v1::OpOptions BlockingOptions();
// Non-blocking: wait for `wait` >= wait_value first (when `wait` is set), write
// `signal` = signal_value once outputs are complete (when `signal` is set).
v1::OpOptions FencedOptions(const Fence* wait, uint64_t wait_value, const Fence* signal,
                            uint64_t signal_value);

}  // namespace epd
