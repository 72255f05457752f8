// Loads every epd kernel into the current device's context ahead of the first launch.
//
// Why: with CUDA's lazy loading (the default on Linux since CUDA 12.2) the first launch of a
// kernel loads its module, and that load waits until the device's running work drains. The
// daemon queues an op behind a fence-wait kernel that spins until the frontend signals, and
// a frontend signals a posted op only after the daemon answered it, which the rank's worker
// does after the launch returns: the first fenced op of each kind would hold the worker in
// its launch until the spin gave up (op_timeout), failing the op. Loaded up front, no launch
// ever waits for the device. (NCCL does the same for its kernels at communicator init.)
#pragma once

#include <cuda_runtime.h>

namespace epd::kernels {

// Every kernel of epd_kernels, every instantiation, on the current device.
cudaError_t PreloadKernels();

}  // namespace epd::kernels
