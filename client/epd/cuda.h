// CUDA helpers of the client (only in builds with EPD_WITH_CUDA; include from CUDA frontends).
//
// ExportDeviceTensor: describes the allocation holding a device tensor for RegisterBuffer
// (cudaIpcGetMemHandle of the allocation base from cuMemGetAddressRange, plus the offset).
// Daemon-exported device regions (handle buffers, fence pages) are opened by
// MapMemorySource / HandleView::Open / Fence::Open with cudaIpcOpenMemHandle.
// Fence stream ops: cuStreamWriteValue64 / cuStreamWaitValue64 on the frontend's stream, so
// they can be captured in a CUDA graph and never involve the CPU. Wait on a device fence from
// a stream of the GPU it lives on (the session's rank's, Fence::source().device()): the
// daemon orders an op's outputs before its signal for work on that GPU only.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "client/epd/fence.h"
#include "common/status.h"
#include "epd/v1/types.pb.h"

namespace epd::cuda {

// MemorySource{cuda_ipc_handle, device, offset, size} for [ptr, ptr + bytes).
StatusOr<v1::MemorySource> ExportDeviceTensor(const void* ptr, size_t bytes);

// Enqueues `counter = value` on `stream` after the work already on it (frontend -> daemon).
Status SignalFenceOnStream(const Fence& fence, uint64_t value, cudaStream_t stream);
// Makes `stream` wait until counter >= value (daemon -> frontend) before later work.
Status WaitFenceOnStream(const Fence& fence, uint64_t value, cudaStream_t stream);

}  // namespace epd::cuda
