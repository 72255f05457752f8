// CopyNow / FillNow: copies between host and device memory, and fills of device memory, that
// are complete when they return and wait for nothing else on the device.
//
// Why not cudaMemcpy / cudaMemset: from pageable host memory cudaMemcpy returns once the bytes
// are staged, before they land on the device, and cudaMemset returns before it ran; a fence
// signal on another stream, or an RPC, that follows can then let a kernel (of this process or
// of the daemon) read the old bytes. Both also run on the legacy default stream, which first
// waits for every blocking stream of the process, one of which may wait on a fence that the
// caller signals only after the copy. These run on a private non-blocking stream of the
// memory's GPU (the current device is left as it was: common/cuda_device.h).
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/status.h"

namespace epd::cuda {

// Either side may be host (pageable or pinned) or device memory of any GPU (unified addressing).
Status CopyNow(void* dst, const void* src, size_t bytes);
Status FillNow(void* device, uint8_t value, size_t bytes);

}  // namespace epd::cuda
