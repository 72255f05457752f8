// Fence: a daemon-exported 64-bit counter (docs/design.md §6), mapped into this process.
//
// Ops carry OpOptions{wait, signal}: the daemon waits for counter >= wait.value before
// reading inputs and writes signal.value once the outputs are complete. On host memory (cpu
// backend) the frontend signals with a release store and waits with bounded acquire polling;
// on device memory it uses the stream helpers of client/epd/cuda.h instead.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>

#include "client/epd/mapped_region.h"
#include "common/status.h"
#include "epd/v1/epd.pb.h"

namespace epd {

class Fence {
 public:
  // Maps the page of a CreateFence answer and checks its versioned header (host pages only).
  static StatusOr<std::unique_ptr<Fence>> Open(const v1::CreateFenceResponse& created);

  uint64_t id() const { return id_; }
  uint64_t buffer_id() const { return buffer_id_; }
  const v1::MemorySource& source() const { return source_; }
  // Address of the counter in this process (a device pointer when on_device()).
  uint64_t* counter() const { return region_->at<uint64_t>(counter_offset_); }
  bool on_device() const { return region_->on_device(); }

  // counter = value, with release ordering (FAILED_PRECONDITION on device memory).
  Status Signal(uint64_t value);
  // Current value with acquire ordering (0 on device memory).
  uint64_t Load() const;
  // Polls until counter >= value; DEADLINE_EXCEEDED naming both values after `timeout`.
  Status Wait(uint64_t value, std::chrono::milliseconds timeout) const;

  // OpOptions pieces naming this fence.
  v1::FenceOp At(uint64_t value) const;

 private:
  Fence() = default;

  uint64_t id_ = 0;
  uint64_t buffer_id_ = 0;
  uint64_t counter_offset_ = 0;
  v1::MemorySource source_;
  std::unique_ptr<MappedRegion> region_;
};

}  // namespace epd
