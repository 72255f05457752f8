// DeviceMemory / PinnedHostMemory: counted allocations (every allocation and free goes
// through the backend's AllocationCounter, so tests can assert that ops never allocate).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <memory>

#include "daemon/core/allocation_counter.h"
#include "common/status.h"

namespace epd::cuda {

class DeviceMemory {
 public:
  // Zero-filled through `stream` (synchronised here: allocation is never on an op path).
  static StatusOr<std::unique_ptr<DeviceMemory>> Create(int device, size_t bytes,
                                                        AllocationCounter& counter,
                                                        cudaStream_t stream);
  ~DeviceMemory();
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;

  char* data() const { return data_; }
  size_t size() const { return size_; }
  int device() const { return device_; }

 private:
  DeviceMemory(int device, char* data, size_t size, AllocationCounter& counter)
      : device_(device), data_(data), size_(size), counter_(counter) {}
  int device_;
  char* data_;
  size_t size_;
  AllocationCounter& counter_;
};

// Page-locked host memory mapped into every device's address space (kernels write error
// records into it; the host reads them after the op's event completed).
class PinnedHostMemory {
 public:
  static StatusOr<std::unique_ptr<PinnedHostMemory>> Create(size_t bytes,
                                                            AllocationCounter& counter);
  ~PinnedHostMemory();
  PinnedHostMemory(const PinnedHostMemory&) = delete;
  PinnedHostMemory& operator=(const PinnedHostMemory&) = delete;

  void* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  PinnedHostMemory(void* data, size_t size, AllocationCounter& counter)
      : data_(data), size_(size), counter_(counter) {}
  void* data_;
  size_t size_;
  AllocationCounter& counter_;
};

}  // namespace epd::cuda
