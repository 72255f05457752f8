// CUDA helpers of epd-bench (built only with CUDA): device buffers, a host-released gate that
// holds a stream until every rank's work is enqueued, and event timing.
//
// Why the gate: with an idle stream, an event recorded before an op runs at once and the op
// starts only after the host finishes enqueueing it, so the span would include launch
// overhead. Arming the gate first queues [gate][start][op][stop] on the GPU; opening it (a
// host store to pinned memory) starts every rank at nearly the same instant.
//
// Two kinds: a one-thread polling kernel (in-process mode: same context as the backend), or
// a stream memory op, cuStreamWaitValue32 (frontend processes: without MPS, a kernel of the
// frontend's context would time-slice with the daemon's kernels and distort the span).
#pragma once

#include <cuda_runtime_api.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "common/status.h"

namespace epd::bench::gpu {

Status Check(cudaError_t error, const char* what);
#define EPD_BENCH_CUDA(call) EPD_RETURN_IF_ERROR(::epd::bench::gpu::Check((call), #call))

int DeviceCount();
std::string DeviceName(int device);

class DeviceBuffer {
 public:
  static StatusOr<std::unique_ptr<DeviceBuffer>> Create(int device, size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* data() const { return data_; }
  size_t size() const { return bytes_; }
  int device() const { return device_; }

 private:
  DeviceBuffer() = default;
  int device_ = 0;
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

class Gate {
 public:
  enum class Kind { kKernel, kStreamWait };
  static StatusOr<std::unique_ptr<Gate>> Create(Kind kind);
  ~Gate();
  Gate(const Gate&) = delete;
  Gate& operator=(const Gate&) = delete;
  // Holds `stream` until the gate holds a value >= `value`; the kernel kind also gives up
  // after `timeout_ns`. Callers always Open() what they armed (the destructor opens fully).
  Status Arm(cudaStream_t stream, uint32_t value, uint64_t timeout_ns = 30'000'000'000ull);
  void Open(uint32_t value);
  // The kernel kind: whether a wait gave up since the last call (the span it held is then
  // not the op's, and the host took the whole timeout to open it). Clears the mark.
  bool TakeTimedOut();

 private:
  Gate() = default;
  Kind kind_ = Kind::kKernel;
  void* wait_value_fn_ = nullptr;  // cuStreamWaitValue32 from the driver entry point
  uint32_t* host_ = nullptr;
  uint32_t* device_ = nullptr;
};

// A start/stop event pair on one device (timing enabled).
class EventPair {
 public:
  static StatusOr<std::unique_ptr<EventPair>> Create(int device);
  ~EventPair();
  EventPair(const EventPair&) = delete;
  EventPair& operator=(const EventPair&) = delete;
  Status RecordStart(cudaStream_t stream);
  Status RecordStop(cudaStream_t stream);
  // Waits up to `timeout` for stop (polling: a stream blocked on a fence that never comes
  // must not hang the bench), returns the span in microseconds.
  StatusOr<double> ElapsedUs(std::chrono::milliseconds timeout = std::chrono::milliseconds(60'000));

 private:
  EventPair() = default;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

}  // namespace epd::bench::gpu
