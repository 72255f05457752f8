// MappedRegion: memory the daemon exports (handle receive regions, fence pages) or a frontend
// shares, mapped into this process. Host regions come from POSIX shared memory (cpu backend);
// device regions from CUDA IPC (cuda backend, only when the client is built with CUDA).
#pragma once

#include <cstddef>
#include <memory>

#include "common/status.h"
#include "epd/v1/types.pb.h"

namespace epd {

class MappedRegion {
 public:
  virtual ~MappedRegion() = default;
  // Start of the described range (MemorySource.offset already applied).
  virtual void* data() const = 0;
  virtual size_t size() const = 0;
  // True when data() is a device pointer: the host must not dereference it.
  virtual bool on_device() const = 0;

  template <typename T>
  T* at(size_t offset_bytes) const {
    return reinterpret_cast<T*>(static_cast<char*>(data()) + offset_bytes);
  }
};

// Maps what a MemorySource describes: shm_name -> host mapping (read/write);
// cuda_ipc_handle -> device mapping (UNIMPLEMENTED when built without CUDA).
StatusOr<std::unique_ptr<MappedRegion>> MapMemorySource(const v1::MemorySource& source);

}  // namespace epd
