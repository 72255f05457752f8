// Which of the daemon's GPUs holds memory a frontend registers: the one with the UUID the
// source names, when it names one (a frontend may number GPUs differently from the daemon:
// CUDA_VISIBLE_DEVICES, containers), else the node rank `device` gives. No CUDA here: the
// daemon passes its GPUs' UUIDs in node-rank order.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"
#include "daemon/core/backend.h"

namespace epd::cuda {

// The node rank holding `source`'s memory, or -1 when it names none (device -1, no UUID).
// INVALID_ARGUMENT naming the UUID and the daemon's GPUs when no GPU of this daemon has it.
StatusOr<int> SourceDevice(const MemorySource& source, const std::vector<std::string>& gpu_uuids);

}  // namespace epd::cuda
