// Private: opens a CUDA IPC MemorySource. Implemented by cuda_ipc.cc when the client is built
// with CUDA, else by cuda_stub.cc (UNIMPLEMENTED), so the library always links.
#pragma once

#include <memory>

#include "client/epd/mapped_region.h"

namespace epd {

StatusOr<std::unique_ptr<MappedRegion>> OpenCudaIpcRegion(const v1::MemorySource& source);

}  // namespace epd
