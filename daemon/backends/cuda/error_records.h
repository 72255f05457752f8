// ErrorRecords: a ring of DeviceError records in mapped pinned memory, one claimed per
// enqueued op of a rank; and the translation of a record into the Status the op fails with.
//
// NOTE: a record is cleared when claimed and read only after its op's event completed; the
// ring is large enough that a record is never reclaimed while its op can still be pending.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/status.h"
#include "daemon/backends/cuda/device_memory.h"
#include "daemon/backends/cuda/group_aborts.h"
#include "kernels/device_error.cuh"
#include "kernels/device_error_status.h"

namespace epd::cuda {

// What an op was, for error messages; formatted only when the op failed, so enqueueing an
// op costs no string formatting.
struct PendingOp {
  int record = 0;
  const char* op = "";                       // "dispatch", "combine", "update", "fence wait"
  std::shared_ptr<const std::string> group;  // null for fence waits
  int rank = 0;                              // group rank (node rank for fence waits)
  uint64_t value = 0;                        // op sequence number / awaited fence value
  std::shared_ptr<const GroupAborts> aborts;  // null for fence waits
  std::string Describe() const;
};

class ErrorRecords {
 public:
  static constexpr int kRecords = 4096;
  // `reclaimer`: as PinnedHostMemory::Create's.
  static StatusOr<std::unique_ptr<ErrorRecords>> Create(AllocationCounter& counter,
                                                        Reclaimer* reclaimer);

  // Claims and clears the next record; returns its index and its device-visible address.
  kernels::DeviceError* Claim(int* index);
  // The first error recorded by `ops` (in op order), or OK.
  Status Collect(const std::vector<PendingOp>& ops) const;

 private:
  explicit ErrorRecords(std::unique_ptr<PinnedHostMemory> memory) : memory_(std::move(memory)) {}
  kernels::DeviceError* records() const {
    return static_cast<kernels::DeviceError*>(memory_->data());
  }
  std::unique_ptr<PinnedHostMemory> memory_;
  std::mutex mu_;
  int next_ = 0;
};

// `aborts`: the op's group's reasons for aborted and abandoned ops (null for fence waits).
Status DeviceErrorToStatus(const kernels::DeviceError& error, const std::string& what,
                           const GroupAborts* aborts = nullptr);

}  // namespace epd::cuda
