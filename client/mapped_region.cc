#include "client/epd/mapped_region.h"

#include "client/cuda_region.h"
#include "client/epd/shared_memory.h"

namespace epd {

StatusOr<std::unique_ptr<MappedRegion>> MapMemorySource(const v1::MemorySource& source) {
  switch (source.location_case()) {
    case v1::MemorySource::kShmName: {
      EPD_ASSIGN_OR_RETURN(
          auto shm, SharedMemoryBuffer::Open(source.shm_name(), source.offset(), source.size()));
      return std::unique_ptr<MappedRegion>(std::move(shm));
    }
    case v1::MemorySource::kCudaIpcHandle:
      return OpenCudaIpcRegion(source);
    default:
      return InvalidArgumentError("memory source has neither shm_name nor cuda_ipc_handle");
  }
}

}  // namespace epd
