// Built instead of cuda_ipc.cc when the client has no CUDA (cpu-only machines, CI).
#include "client/cuda_region.h"

namespace epd {

StatusOr<std::unique_ptr<MappedRegion>> OpenCudaIpcRegion(const v1::MemorySource& source) {
  return UnimplementedError(
      "memory source on device {} is a CUDA IPC handle, but this client was built without "
      "CUDA (EPD_WITH_CUDA=OFF)",
      source.device());
}

}  // namespace epd
