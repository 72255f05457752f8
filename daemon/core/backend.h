// Backend: what the core needs from a device family (cpu reference, cuda).
//
// The core owns sessions, ids, validation, ordering and the matching of collective ops across
// ranks; a backend owns memory and executes ops. Op methods are called on the worker thread of
// one node rank, in submission order; they may enqueue device work and return (cuda) or run it
// to completion (cpu). Complete() reports when everything enqueued so far for a handle has
// finished, with any error the device recorded (bad expert id, capacity overflow, timeout).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/core/allocation_counter.h"
#include "common/dtype.h"
#include "daemon/core/group_config.h"
#include "common/status.h"

namespace epd {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;

// Where a frontend's memory lives (RegisterBuffer) or where exported memory can be opened.
struct MemorySource {
  enum class Kind { kHostShm = 0, kCudaIpc = 1 };
  Kind kind = Kind::kHostShm;
  std::string shm_name;    // host: POSIX shared memory object name ("/epd-...")
  std::string ipc_handle;  // cuda: the 64 bytes of a cudaIpcMemHandle_t
  int device = -1;         // node rank (GPU index) holding the memory; -1 for host
  uint64_t offset = 0;     // bytes from the start of the shm object / IPC allocation
  uint64_t size = 0;       // bytes registered
};

// Memory the backend can address: an imported frontend region or a daemon-owned allocation.
class Memory {
 public:
  virtual ~Memory() = default;
  virtual void* data() const = 0;  // start of the registered range (offset already applied)
  virtual size_t size() const = 0;
  virtual int device() const = 0;  // node rank, or -1 for host memory
};

// Daemon-owned memory that frontends map (handle receive buffers, fence pages).
class ExportedMemory : public Memory {
 public:
  virtual MemorySource Describe() const = 0;  // what a client opens; offset 0, size = size()
};

enum class ComputeMode { kUnknown = 0, kDefault = 1, kExclusiveProcess = 2, kProhibited = 3 };
constexpr std::string_view ComputeModeName(ComputeMode mode) {
  switch (mode) {
    case ComputeMode::kDefault:
      return "default";
    case ComputeMode::kExclusiveProcess:
      return "exclusive-process";
    case ComputeMode::kProhibited:
      return "prohibited";
    default:
      return "unknown";
  }
}

struct NodeGpu {
  int index = 0;
  std::string name;
  std::string uuid;
  uint64_t total_memory_bytes = 0;
  int compute_capability = 0;  // major * 10 + minor
  // The daemon's context is an MPS client: its streams and the frontends' run concurrently.
  // Without MPS every daemon/frontend hand-off is a context switch (~200 us on H200).
  bool mps_active = false;
  ComputeMode compute_mode = ComputeMode::kUnknown;
};

struct NodeDescription {
  std::string backend;
  int ranks = 0;
  std::vector<NodeGpu> gpus;
  std::string nccl_version;  // empty where NCCL is not used
};

// A resolved, bounds-checked tensor: data points into imported or exported memory.
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::kFp32;
  std::vector<int64_t> shape;
  int64_t rows() const { return shape.empty() ? 0 : shape[0]; }
};

// Backend-side state of a group (communicator, group-level buffers).
class BackendGroup {
 public:
  virtual ~BackendGroup() = default;
  virtual const GroupConfig& config() const = 0;
};

// Backend-side state of one rank's handle: every buffer a dispatch/combine pair needs.
class BackendHandle {
 public:
  virtual ~BackendHandle() = default;
  virtual int group_rank() const = 0;
  virtual const HandleLayout& layout() const = 0;
  virtual ExportedMemory& exported() = 0;  // receive region the frontend reads and writes
  virtual int num_tokens() const = 0;      // tokens bound by the last UpdateHandle
};

// Byte offsets of a handle's private buffers (the routing UpdateHandle binds and dispatch
// reads) inside its private region; shapes in kernels/routing.cuh.
struct HandlePrivateOffsets {
  uint64_t topk_idx = 0, topk_weights = 0, expert_counts = 0, slot = 0, local_rank = 0,
           bound_tokens = 0, bytes = 0;
};

// What a backend exports of one rank's handle so that the rank's frontend can launch the
// collective kernels itself (the frontend-launched data path): the private region and the
// rank's sync area, both daemon-owned memory the frontend maps once.
struct DataPlaneExport {
  MemorySource private_region;
  HandlePrivateOffsets private_offsets;
  MemorySource sync_area;
  uint64_t sync_area_bytes = 0;
  int max_blocks = 1;  // grid bound of one collective kernel on this group
};

struct UpdateArgs {
  TensorView topk_idx;      // [n, K] int32 or int64
  TensorView topk_weights;  // [n, K] f32; data null when absent
  int num_tokens = 0;
};

struct DispatchArgs {
  BackendHandle* handle = nullptr;
  TensorView x;  // [n, H] token dtype
};

struct CombineArgs {
  BackendHandle* handle = nullptr;
  const void* expert_out = nullptr;  // [recv_rows, H]; the handle's recv_x when not given
  TensorView out;                    // [n, H] token dtype
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual NodeDescription Describe() const = 0;
  virtual int num_ranks() const = 0;
  virtual AllocationCounter& allocations() = 0;
  virtual std::chrono::milliseconds op_timeout() const = 0;

  // Opens a frontend's memory for use on `node_rank`'s device (cached by the backend).
  virtual StatusOr<std::shared_ptr<Memory>> Import(const MemorySource& source, int node_rank) = 0;
  // A zero-filled 4 KiB page holding a versioned fence header and a 64-bit counter.
  virtual StatusOr<std::unique_ptr<ExportedMemory>> CreateFence(int node_rank) = 0;

  virtual StatusOr<std::unique_ptr<BackendGroup>> CreateGroup(const GroupConfig& config) = 0;
  virtual StatusOr<std::unique_ptr<BackendHandle>> CreateHandle(BackendGroup& group,
                                                                int group_rank) = 0;

  // --- ops, on the worker thread of the handle's node rank, in order ---
  virtual Status WaitFence(int node_rank, ExportedMemory& fence, uint64_t value) = 0;
  virtual Status SignalFence(int node_rank, ExportedMemory& fence, uint64_t value) = 0;
  virtual Status UpdateHandle(BackendHandle& handle, const UpdateArgs& args) = 0;
  // `all` holds every group rank's arguments of the matched collective, indexed by group rank.
  virtual Status Dispatch(BackendGroup& group, int group_rank,
                          const std::vector<DispatchArgs>& all) = 0;
  virtual Status Combine(BackendGroup& group, int group_rank,
                         const std::vector<CombineArgs>& all) = 0;
  // Calls `done` once all work enqueued so far for `handle` finished; never blocks the caller.
  virtual void Complete(BackendHandle& handle, std::function<void(Status)> done) = 0;
  // The daemon stops after its drain timeout: host-side waits (fences, barriers) should give
  // up now with UNAVAILABLE instead of running to op_timeout. Device waits stay bounded.
  virtual void BeginShutdown() {}

  // --- the frontend-launched data path (backends with a device data plane) ---
  // Exports `handle`'s private region and sync area; FAILED_PRECONDITION where the backend
  // has no device data plane (cpu: frontends use the daemon's ops).
  virtual StatusOr<DataPlaneExport> ExportDataPlane(BackendGroup& group, BackendHandle& handle);
  // Called when the group's ops move to frontends (dead_group_rank < 0), and when a
  // frontend-launched rank's frontend ended, maybe mid-op (dead_group_rank >= 0). Clears the
  // dead rank's sync area (its kernels are gone with its context; the survivors' in-flight
  // kernels time out on their own) and returns a sequence base above every op sequence
  // number any rank used on the group so far, plus kGroupResetSequenceGap; the daemon's own
  // numbering continues from it too.
  virtual StatusOr<uint64_t> ResetDataPlane(BackendGroup& group, int dead_group_rank);
};

}  // namespace epd
