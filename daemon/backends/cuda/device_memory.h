// DeviceMemory / PinnedHostMemory: counted allocations (every allocation and free goes
// through the backend's AllocationCounter, so tests can assert that ops never allocate),
// given back through the backend's Reclaimer, which never waits for the GPU (reclaimer.h).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <memory>

#include "common/status.h"
#include "daemon/backends/cuda/reclaimer.h"
#include "daemon/core/allocation_counter.h"

namespace epd::cuda {

class DeviceMemory {
 public:
  // Zero-filled through `stream` (synchronised here: allocation is never on an op path).
  // `reclaimer` frees it and outlives it.
  static StatusOr<std::unique_ptr<DeviceMemory>> Create(int device, size_t bytes,
                                                        AllocationCounter& counter,
                                                        Reclaimer& reclaimer, cudaStream_t stream);
  ~DeviceMemory();
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;

  char* data() const { return data_; }
  size_t size() const { return size_; }
  int device() const { return device_; }

 private:
  DeviceMemory(int device, char* data, size_t size, AllocationCounter& counter,
               Reclaimer& reclaimer)
      : device_(device), data_(data), size_(size), counter_(counter), reclaimer_(reclaimer) {}
  int device_;
  char* data_;
  size_t size_;
  AllocationCounter& counter_;
  Reclaimer& reclaimer_;
};

// Page-locked host memory mapped into every device's address space (kernels write error
// records into it; the host reads them after the op's event completed). Zero-filled. With a
// `reclaimer` (which then outlives it) it is taken from and given back to its cache; without
// one it is freed with cudaFreeHost, which waits for the GPU: only for what lives as long as
// the backend.
class PinnedHostMemory {
 public:
  static StatusOr<std::unique_ptr<PinnedHostMemory>> Create(size_t bytes,
                                                            AllocationCounter& counter,
                                                            Reclaimer* reclaimer = nullptr);
  ~PinnedHostMemory();
  PinnedHostMemory(const PinnedHostMemory&) = delete;
  PinnedHostMemory& operator=(const PinnedHostMemory&) = delete;

  void* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  PinnedHostMemory(void* data, size_t size, AllocationCounter& counter, Reclaimer* reclaimer)
      : data_(data), size_(size), counter_(counter), reclaimer_(reclaimer) {}
  void* data_;
  size_t size_;
  AllocationCounter& counter_;
  Reclaimer* reclaimer_;
};

}  // namespace epd::cuda
