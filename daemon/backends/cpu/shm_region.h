// RAII POSIX shared memory mapping: the cpu backend's stand-in for CUDA IPC. Frontends create
// objects for their tensors; the daemon creates them for the memory it exports.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "common/status.h"

namespace epd {

class ShmRegion {
 public:
  // Creates (O_EXCL) a zero-filled object of `bytes`; it is unlinked when the region dies.
  static StatusOr<std::unique_ptr<ShmRegion>> Create(const std::string& name, size_t bytes);
  // Maps an existing object; `field` names the request field in errors.
  static StatusOr<std::unique_ptr<ShmRegion>> Open(const std::string& name, std::string_view field);
  ~ShmRegion();
  ShmRegion(const ShmRegion&) = delete;
  ShmRegion& operator=(const ShmRegion&) = delete;

  void* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& name() const { return name_; }

 private:
  ShmRegion(std::string name, void* data, size_t size, bool owner)
      : name_(std::move(name)), data_(data), size_(size), owner_(owner) {}
  std::string name_;
  void* data_;
  size_t size_;
  bool owner_;
};

// A valid POSIX shm name: "/" followed by 1-200 characters without "/".
Status ValidateShmName(const std::string& name, std::string_view field);

}  // namespace epd
