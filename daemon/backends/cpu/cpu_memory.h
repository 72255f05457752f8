// The cpu backend's memory objects: host buffers counted in its AllocationCounter, and POSIX
// shared-memory regions it imports from frontends or exports to them (fences, handles).
#pragma once

#include <cstddef>
#include <memory>

#include "daemon/backends/cpu/shm_region.h"
#include "daemon/core/allocation_counter.h"
#include "daemon/core/backend.h"

namespace epd {

// Host memory that counts itself in the backend's AllocationCounter.
class CountedHostBuffer {
 public:
  CountedHostBuffer(size_t bytes, AllocationCounter& counter)
      : data_(new std::byte[bytes]()), bytes_(bytes), counter_(counter) {
    counter_.OnAllocate(bytes_);
  }
  ~CountedHostBuffer() { counter_.OnFree(bytes_); }
  template <typename T>
  T* as() const {
    return reinterpret_cast<T*>(data_.get());
  }

 private:
  std::unique_ptr<std::byte[]> data_;
  size_t bytes_;
  AllocationCounter& counter_;
};

class ImportedShm : public Memory {
 public:
  explicit ImportedShm(std::unique_ptr<ShmRegion> region) : region_(std::move(region)) {}
  void* data() const override { return region_->data(); }
  size_t size() const override { return region_->size(); }
  int device() const override { return -1; }

 private:
  std::unique_ptr<ShmRegion> region_;  // maps only the registered range
};

class ExportedShm : public ExportedMemory {
 public:
  ExportedShm(std::unique_ptr<ShmRegion> region, AllocationCounter& counter)
      : region_(std::move(region)), counter_(counter) {
    counter_.OnAllocate(region_->size());
  }
  ~ExportedShm() override { counter_.OnFree(region_->size()); }
  void* data() const override { return region_->data(); }
  size_t size() const override { return region_->size(); }
  int device() const override { return -1; }
  MemorySource Describe() const override {
    MemorySource source;
    source.kind = MemorySource::Kind::kHostShm;
    source.shm_name = region_->name();
    source.size = region_->size();
    return source;
  }

 private:
  std::unique_ptr<ShmRegion> region_;
  AllocationCounter& counter_;
};

}  // namespace epd
