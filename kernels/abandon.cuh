// Abandon: a rank that cannot take part in collective op `seq` (its arguments were rejected,
// its routing failed) still marks the op on its stream, in order after its earlier work, so
// every peer waiting for its flags of that op fails at once instead of at timeout_ns.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/sync_area.cuh"

namespace epd::kernels {

// sync: every rank's SyncArea; one thread writes every peer's abandoned[rank].
cudaError_t LaunchAbandon(const SyncAreas& sync, int world_size, int rank, uint64_t seq,
                          cudaStream_t stream);

}  // namespace epd::kernels
