// Shared by the GPU tests: one CUDA backend for the whole test binary (peer access is set up
// once), skip helpers, test-owned device buffers and a blocking wait on Complete().
//
// The tests play the core: one thread per rank calls the op methods in order, each with its
// own rank's arguments.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "daemon/backends/cuda/cuda_backend.h"
#include "daemon/core/backend.h"

namespace epd::gputest {

// The shared backend (op_timeout from EPD_TEST_OP_TIMEOUT_MS, default 3000), or null with
// the reason in SkipReason().
Backend* SharedBackend();
const std::string& SkipReason();
int GpuCount();

// A second backend with kSharedGpuRanks node ranks spread round-robin over the visible GPUs
// (several ranks per GPU, small grids): runs 4- and 8-rank groups on hosts with fewer GPUs.
constexpr int kSharedGpuRanks = 8;
Backend* SharedGpuBackend();
int SharedGpuDevice(int node_rank);

#define EPD_REQUIRE_GPUS(n)                                                                   \
  do {                                                                                        \
    if (::epd::gputest::SharedBackend() == nullptr) {                                         \
      GTEST_SKIP() << "no CUDA GPU: " << ::epd::gputest::SkipReason();                        \
    }                                                                                         \
    if (::epd::gputest::GpuCount() < (n)) {                                                   \
      GTEST_SKIP() << "no CUDA GPU: needs " << (n) << " GPUs, " << ::epd::gputest::GpuCount() \
                   << " visible";                                                             \
    }                                                                                         \
  } while (0)

// Test-owned device memory (not counted by the backend's allocator).
class DeviceBuffer {
 public:
  DeviceBuffer(int device, size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* data() const { return data_; }
  size_t size() const { return size_; }
  void Upload(const void* host, size_t bytes, size_t offset = 0);
  void Download(void* host, size_t bytes, size_t offset = 0) const;

 private:
  int device_;
  void* data_ = nullptr;
  size_t size_;
};

void CopyToDevice(int device, void* dst, const void* src, size_t bytes);
void CopyToHost(int device, void* dst, const void* src, size_t bytes);

// Blocks until backend.Complete(handle, ...) reports.
Status WaitComplete(Backend& backend, BackendHandle& handle);

// Runs fn(rank) on one thread per rank and joins them.
void OnEveryRank(int ranks, const std::function<void(int)>& fn);

}  // namespace epd::gputest
