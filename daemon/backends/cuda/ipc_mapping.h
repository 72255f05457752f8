// IpcMapping: one frontend allocation opened with cudaIpcOpenMemHandle on one device, handed to
// the Reclaimer to close when the last user releases it (reclaimer.h: a close waits for the
// whole GPU). ImportCache hands out shared mappings keyed by the handle's bytes and the
// device, so registering the same allocation twice opens it once, and registering it again
// before its close ran takes the mapping back.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "common/status.h"
#include "daemon/backends/cuda/reclaimer.h"

namespace epd::cuda {

class IpcMapping {
 public:
  // handle: the 64 bytes of a cudaIpcMemHandle_t. `reclaimer` closes it; it outlives the mapping.
  static StatusOr<std::shared_ptr<IpcMapping>> Open(const std::string& handle, int device,
                                                    Reclaimer& reclaimer);
  ~IpcMapping();
  IpcMapping(const IpcMapping&) = delete;
  IpcMapping& operator=(const IpcMapping&) = delete;

  char* base() const { return base_; }
  size_t allocation_bytes() const { return allocation_bytes_; }
  int device() const { return device_; }

 private:
  friend class ImportCache;
  IpcMapping(std::string handle, int device, char* base, size_t bytes, Reclaimer& reclaimer)
      : handle_(std::move(handle)),
        device_(device),
        base_(base),
        allocation_bytes_(bytes),
        reclaimer_(reclaimer) {}
  std::string handle_;
  int device_;
  char* base_;
  size_t allocation_bytes_;
  Reclaimer& reclaimer_;
};

class ImportCache {
 public:
  explicit ImportCache(Reclaimer& reclaimer) : reclaimer_(reclaimer) {}
  StatusOr<std::shared_ptr<IpcMapping>> Get(const std::string& handle, int device);

 private:
  Reclaimer& reclaimer_;
  std::mutex mu_;
  std::map<std::pair<std::string, int>, std::weak_ptr<IpcMapping>> mappings_;
};

}  // namespace epd::cuda
