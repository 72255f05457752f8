// Reclaimer: gives the cuda backend's memory back without a CUDA call that waits for the GPU
// while other threads launch.
//
// Why: cudaFree, cudaFreeHost and cudaIpcCloseMemHandle wait until every kernel running in the
// context has ended, and while they wait every other thread's launches, event records, copies
// and allocations block too (measured on an H200, docs/design.md §7). A kernel the daemon runs
// may wait for host progress: a fence wait ends when the frontend signals, which it does once
// its ops are answered, and a rank's collective ends when its peers' kernels are launched. A
// release at such a moment held every rank's launches until op_timeout and failed the ops.
// So nothing here waits for the device:
// - Device memory is freed with cudaFreeAsync on the device's release stream, which first
//   waits for the work enqueued so far on every registered stream (the lanes): the memory's
//   last users are among that work. Such a free of cudaMalloc memory gives it back to the
//   driver only at a synchronize call of the stream, which nothing else makes: without one,
//   every released handle stayed the daemon's (each frontend restart with a new handle kept
//   its size, GPU memory other processes could not get). The release streams are
//   synchronized when nothing runs, as mappings are closed.
// - Pinned host memory is kept by size and handed out again (zeroed); freed at the end.
// - IPC mappings are closed, and the frees of each device completed (its release stream
//   synchronized), on the reclaimer's thread at a moment when no registered stream (release
//   streams included) has work, checked while holding the launch gate exclusively (every enqueue
//   holds it shared), so nothing starts meanwhile and the close does not wait. A GPU that is never
//   idle (frontends posting ahead) gets a drain window: the gate is held for up to kDrainWindow
//   while what runs ends; work that needs a later enqueue to end (a fence the frontend
//   signals once its next op is answered) does not, and the window is given up and tried
//   again after a backoff (doubling from kFirstBackoff to kMaxBackoff), so ops wait at most
//   kDrainWindow now and then while a close or free is pending. Past kMaxCloseDeferral they
//   run anyway (logged). A mapping of the same allocation imported again before its close is
//   handed back instead (Revive).
// One per process (Shared), with the launch gate: those calls wait for the kernels of every
// backend in the process (they share the context), so a reclaimer that saw only its own
// backend's streams idle would free while another backend's collective spins for a launch
// that the free then holds back (tests run several backends in one process).
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common/status.h"

namespace epd::cuda {

class Reclaimer {
 public:
  static constexpr std::chrono::seconds kMaxCloseDeferral{30};
  static constexpr std::chrono::milliseconds kDrainWindow{5};
  static constexpr std::chrono::milliseconds kFirstBackoff{20};
  static constexpr std::chrono::milliseconds kMaxBackoff{1000};

  // The process's reclaimer, made by the first backend and shared by every later one while any
  // holds it. `free_wait`: how long AwaitFrees waits at most (the backend's device waits end
  // within it); the longest of its holders' applies.
  static std::shared_ptr<Reclaimer> Shared(std::chrono::milliseconds free_wait);
  explicit Reclaimer(std::chrono::milliseconds free_wait);
  ~Reclaimer();  // closes what is pending and frees what is cached (the streams are gone)
  Reclaimer(const Reclaimer&) = delete;
  Reclaimer& operator=(const Reclaimer&) = delete;

  // Held by every backend call that enqueues device work, for as long as it enqueues.
  std::shared_lock<std::shared_mutex> Launching() { return std::shared_lock(launch_gate_); }

  // Streams that run ops (made on `device`), registered while they may run any.
  Status AddStream(int device, cudaStream_t stream);
  void RemoveStream(cudaStream_t stream);

  // Frees `data` (cudaMalloc on `device`) once the work enqueued so far on every registered
  // stream has run; the driver gets it back when the reclaimer's thread completes the frees
  // (when nothing runs) or AwaitFrees does.
  void FreeDevice(int device, void* data);
  // For an allocation that failed: waits (at most free_wait) until the frees queued on
  // `device` ran, and completes them. True when some were queued and all ran: the allocation
  // may succeed now (a handle made right after one was released, on a GPU it filled).
  bool AwaitFrees(int device);

  // Pinned host memory of exactly `bytes`: a cached block (zeroed), or null when none is.
  void* TakeHost(size_t bytes);
  void GiveHost(void* data, size_t bytes);

  // Closes the mapping `base` (`bytes`) of `handle` on `device` when nothing runs (above).
  void CloseMapping(const std::string& handle, int device, char* base, size_t bytes);
  // The base and size of `handle`'s mapping on `device` if its close is still pending (it is
  // then no longer pending), else nothing.
  std::optional<std::pair<char*, size_t>> Revive(const std::string& handle, int device);

  // IPC mappings released and not yet closed.
  size_t pending_closes() const;

 private:
  struct Registered {
    int device;
    cudaEvent_t last_work;  // re-recorded by FreeDevice
  };
  struct Pending {
    char* base;
    size_t bytes;
    std::chrono::steady_clock::time_point since;
  };
  using MappingKey = std::pair<std::string, int>;

  StatusOr<cudaStream_t> ReleaseStreamLocked(int device);
  bool StreamsIdleLocked() const;
  // With the launch gate held: waits up to kDrainWindow for every stream to be idle.
  bool DrainedLocked() const;
  void Run();

  std::shared_mutex launch_gate_;
  std::atomic<int64_t> free_wait_ms_;
  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::map<cudaStream_t, Registered> streams_;
  std::map<int, cudaStream_t> release_streams_;  // by device
  // Devices with frees queued and not completed yet, since the first of them.
  std::map<int, std::chrono::steady_clock::time_point> frees_queued_;
  std::multimap<size_t, void*> host_cache_;      // by size
  std::map<MappingKey, Pending> pending_;
  bool stopping_ = false;
  std::thread thread_;  // NOTE: last: starts once everything above exists
};

}  // namespace epd::cuda
