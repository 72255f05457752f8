// CUDA helpers of epd-bench (built only with CUDA): device buffers, a host-released gate that
// holds a stream until every rank's work is enqueued, and event timing.
//
// Why the gate: with an idle stream, an event recorded before an op runs at once and the op
// starts only after the host finishes enqueueing it, so the span would include launch
// overhead. Arming the gate first queues [gate][start][op][stop] on the GPU; opening it (a
// host store that a one-thread kernel polls) starts every rank at nearly the same instant.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "daemon/core/status.h"

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
  static StatusOr<std::unique_ptr<Gate>> Create();
  ~Gate();
  Gate(const Gate&) = delete;
  Gate& operator=(const Gate&) = delete;
  // Enqueues a kernel that returns once the gate holds a value >= `value` (or after
  // `timeout_ns`, so a lost host never hangs the stream).
  Status Arm(cudaStream_t stream, uint32_t value, uint64_t timeout_ns = 30'000'000'000ull);
  void Open(uint32_t value);

 private:
  Gate() = default;
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
  // Waits for stop, returns the span in microseconds.
  StatusOr<double> ElapsedUs();

 private:
  EventPair() = default;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

}  // namespace epd::bench::gpu
