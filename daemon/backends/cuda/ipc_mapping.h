// IpcMapping: one frontend allocation opened with cudaIpcOpenMemHandle on one device, closed
// when the last user releases it. ImportCache hands out shared mappings keyed by the handle's
// bytes and the device, so registering the same allocation twice opens it once.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "common/status.h"

namespace epd::cuda {

class IpcMapping {
 public:
  // handle: the 64 bytes of a cudaIpcMemHandle_t.
  static StatusOr<std::shared_ptr<IpcMapping>> Open(const std::string& handle, int device);
  ~IpcMapping();
  IpcMapping(const IpcMapping&) = delete;
  IpcMapping& operator=(const IpcMapping&) = delete;

  char* base() const { return base_; }
  size_t allocation_bytes() const { return allocation_bytes_; }
  int device() const { return device_; }

 private:
  IpcMapping(int device, char* base, size_t bytes)
      : device_(device), base_(base), allocation_bytes_(bytes) {}
  int device_;
  char* base_;
  size_t allocation_bytes_;
};

class ImportCache {
 public:
  StatusOr<std::shared_ptr<IpcMapping>> Get(const std::string& handle, int device);

 private:
  std::mutex mu_;
  std::map<std::pair<std::string, int>, std::weak_ptr<IpcMapping>> mappings_;
};

}  // namespace epd::cuda
