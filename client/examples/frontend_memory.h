// Where the example frontend keeps its tensors, by backend: POSIX shared memory for the cpu
// backend, device memory exported through CUDA IPC for the cuda backend (builds with CUDA
// only; elsewhere CreateDeviceMemory is UNIMPLEMENTED). Also the frontend's side of fences
// and host copies of device regions, so RankRunner reads the same on both.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "client/epd/fence.h"
#include "client/epd/mapped_region.h"
#include "client/epd/shared_memory.h"

namespace epd::example {

class FrontendMemory {
 public:
  virtual ~FrontendMemory() = default;
  virtual size_t size() const = 0;
  virtual v1::MemorySource Source() const = 0;
  // Write, Read and Fill are complete when they return (an RPC or a fence signal follows).
  virtual Status Write(size_t offset, const void* src, size_t bytes) = 0;
  virtual Status Read(size_t offset, void* dst, size_t bytes) const = 0;
  virtual Status Fill(size_t offset, uint8_t value, size_t bytes) = 0;
  // The shm object on the cpu backend (tests poke at it); nullptr for device memory.
  virtual SharedMemoryBuffer* shm() { return nullptr; }
  // The device address of byte 0 (device memory only; nullptr for host memory).
  virtual void* device_data() const { return nullptr; }
};

StatusOr<std::unique_ptr<FrontendMemory>> CreateHostMemory(size_t bytes);
StatusOr<std::unique_ptr<FrontendMemory>> CreateDeviceMemory(size_t bytes, int device);

// A host copy of a (device) region, viewable through HandleView.
class HostRegion : public MappedRegion {
 public:
  explicit HostRegion(size_t bytes) : bytes_(bytes) {}
  void* data() const override { return const_cast<uint8_t*>(bytes_.data()); }
  size_t size() const override { return bytes_.size(); }
  bool on_device() const override { return false; }

 private:
  std::vector<uint8_t> bytes_;
};

// Device <-> host copies of mapped regions, complete when they return: a fence signalled next
// lets the daemon read them at once (UNIMPLEMENTED without CUDA).
Status CopyToHost(void* host, const void* device, size_t bytes);
Status CopyToDevice(void* device, const void* host, size_t bytes);

// The frontend's side of a fence: host store / bounded host polling for host pages; stream
// write / stream wait plus bounded stream polling for device pages.
Status FrontendSignal(Fence& fence, uint64_t value);
Status FrontendWait(Fence& fence, uint64_t value, std::chrono::milliseconds timeout);

}  // namespace epd::example
