// Bounded fence wait: one thread on the daemon stream spins until a 64-bit fence counter
// (written by a frontend's stream through IPC) reaches a value. Unlike cuStreamWaitValue64 it
// gives up after timeout_ns, writing a kDeviceErrorFenceTimeout record, so a frontend that
// never signals fails its op instead of wedging the rank's stream. It also gives up at once when
// the host's abort word (host-mapped) reaches `abort_at` (kDeviceErrorAborted), e.g. at shutdown.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/device_error.cuh"

namespace epd::kernels {

cudaError_t LaunchFenceWait(const uint64_t* counter, uint64_t value, uint64_t timeout_ns,
                            const uint64_t* abort, uint64_t abort_at, DeviceError* error,
                            cudaStream_t stream);

}  // namespace epd::kernels
