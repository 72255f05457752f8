// Backend: what the core needs from a device family (cpu reference, cuda).
//
// The core owns sessions, ids, validation and ordering; a backend owns memory and executes ops.
// Op methods are called on the worker thread of one node rank, in submission order, and only
// enqueue the work on the handle's lane: the execution stream of its (group, node rank) (a
// CUDA stream, or a cpu backend thread), made with the first handle of that group on that rank
// and destroyed with the group. They never wait for peers. Ops of one lane run in submission
// order; lanes run independently, so a group's waits (a fence never signalled, a late peer)
// never delay another group's ops. Collective ops take one rank's arguments; the ranks of a
// group meet on their lanes (device flags carrying per-op sequence numbers), where every wait
// is bounded by op_timeout and released at once by an abort (AbortGroup, BeginShutdown).
// Complete() reports when everything enqueued so far on the handle's lane has finished, with
// any error recorded there (bad expert id, capacity overflow, a peer that timed out,
// abandoned or was aborted).
//
// Sequence numbers: the k-th collective (dispatch or combine) a rank issues on a group is op k
// of that group on every rank. A rank that cannot take part in its next collective calls
// Abandon, which takes the number and fails the peers' op at once instead of at op_timeout.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/dtype.h"
#include "common/status.h"
#include "daemon/core/allocation_counter.h"
#include "daemon/core/cluster.h"
#include "daemon/core/group_config.h"
#include "daemon/core/transport_record.h"

namespace epd {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;

// The client on whose behalf the daemon opens memory: the backend opens only what this user
// could have opened read-write itself.
struct MemoryRequester {
  int64_t uid = -1;
  std::vector<uint32_t> groups;  // primary and supplementary gids
};

// Where a frontend's memory lives (RegisterBuffer) or where exported memory can be opened.
struct MemorySource {
  enum class Kind { kHostShm = 0, kCudaIpc = 1 };
  Kind kind = Kind::kHostShm;
  std::string shm_name;    // host: POSIX shared memory object name ("/epd-...")
  std::string ipc_handle;  // cuda: the 64 bytes of a cudaIpcMemHandle_t
  int device = -1;         // node rank (GPU index) holding the memory; -1 for host
  std::string device_uuid;  // cuda: the GPU by UUID; when set, it decides (not `device`)
  uint64_t offset = 0;     // bytes from the start of the shm object / IPC allocation
  uint64_t size = 0;       // bytes registered
  // Set by the service for every client registration; nullopt only for trusted in-process
  // callers (tests, the daemon itself).
  std::optional<MemoryRequester> requester;
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
  std::optional<ClusterView> cluster;  // multi-node deployments only (filled by the engine)
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
  // A group that spans daemons: its transport's state for each group rank hosted here
  // (ListGroups); empty for a group of this daemon only.
  virtual std::vector<RankTransportState> transport() const { return {}; }
};

// Backend-side state of one rank's handle: every buffer a dispatch/combine pair needs.
class BackendHandle {
 public:
  virtual ~BackendHandle() = default;
  virtual int group_rank() const = 0;
  virtual const HandleLayout& layout() const = 0;
  virtual ExportedMemory& exported() = 0;  // receive region the frontend reads and writes
  virtual int num_tokens() const = 0;      // tokens bound by the last UpdateHandle
  // Memory held for the handle (HandleInfo.held_bytes): its layout's, plus what a backend
  // keeps beside it.
  virtual uint64_t held_bytes() const { return layout().total_bytes(); }
};

// Byte offsets of a handle's private buffers (the routing UpdateHandle binds and dispatch
// reads) inside its private region; shapes in kernels/routing.cuh.
struct HandlePrivateOffsets {
  uint64_t topk_idx = 0, topk_weights = 0, expert_counts = 0, slot = 0, local_rank = 0,
           bound_tokens = 0, bytes = 0;
  // The routing bind's scratch (kernels/routing_scratch.h); 0 bytes: the frontend's bind
  // runs single-block.
  uint64_t route_scratch = 0, route_scratch_bytes = 0;
  // High-throughput groups: the packed-row plan the routing bind writes (kernels/routing.cuh):
  // dest_row [T, R] and dest_counts [R] int32. Unused (0) otherwise.
  uint64_t dest_row = 0, dest_counts = 0;
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
  // The slot of the group's peer tables the handle's receive buffers are published in: a
  // dispatch source names it with its counts, so frontend-launched peers index their own
  // tables by it too.
  int handle_slot = 0;
};

// An op's fence signal, for backends that fold it into the op (Backend::FoldsFenceSignals):
// the fence is written `value` once the op is complete, whatever its device-side outcome, as
// SignalFence right after the op would. Ignored by the other backends (the caller signals).
struct FenceSignal {
  ExportedMemory* fence = nullptr;  // null: no signal
  uint64_t value = 0;
};

struct UpdateArgs {
  TensorView topk_idx;      // [n, K] int32 or int64
  TensorView topk_weights;  // [n, K] f32; data null when absent
  int num_tokens = 0;
  FenceSignal signal;
};

// One rank's arguments of a collective; the peers' buffers were published with their handles.
struct DispatchArgs {
  // [n, H] token dtype; with fp8 dispatch also [n, H] e4m3 already quantized by the frontend,
  // its scales in x_scales [n, H / 128] (fp32 or uint8 ue8m0; data null when x is bf16).
  TensorView x;
  TensorView x_scales;
  FenceSignal signal;
};

struct CombineArgs {
  // [recv_rows, H] on this rank; the handle's recv_x when null (never with fp8 dispatch:
  // recv_x is e4m3). Exchanged with the peers
  // per op on the stream (each rank publishes its pointer for the op's sequence number).
  const void* expert_out = nullptr;
  TensorView out;  // [n, H] token dtype
  FenceSignal signal;
};

enum class CollectiveKind { kDispatch, kCombine };
inline std::string_view CollectiveKindName(CollectiveKind kind) {
  return kind == CollectiveKind::kDispatch ? "dispatch" : "combine";
}

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
  // Publishes the handle's receive buffers to the group's peers once (a rank may hold several
  // handles of a group, e.g. one per layer); destroying it withdraws them.
  virtual StatusOr<std::unique_ptr<BackendHandle>> CreateHandle(BackendGroup& group,
                                                                int group_rank) = 0;

  // --- ops, on the worker thread of the handle's node rank, in order ---
  // The fence ops run on `handle`'s lane, ordered with the handle's other ops; `fence` is a
  // page of the handle's node rank.
  virtual Status WaitFence(BackendHandle& handle, ExportedMemory& fence, uint64_t value) = 0;
  virtual Status SignalFence(BackendHandle& handle, ExportedMemory& fence, uint64_t value) = 0;
  // True when UpdateHandle, Dispatch and Combine write their args' FenceSignal themselves
  // (the cuda backend: from the op's last kernel, one stream operation less per fenced op);
  // else the caller follows a successful op with SignalFence.
  virtual bool FoldsFenceSignals() const { return false; }
  // Before a collective of `handle`'s rank waits on its fence: whatever the op needs that must
  // not happen while the rank's stream waits for its frontend. The cuda backend forms a
  // spanning group's NCCL communicator here: NCCL's init may synchronize the device, which a
  // fence-wait kernel spinning for the frontend's signal (sent once the op is answered) would
  // hold until the op timed out. An error fails the op like a failed fence wait.
  virtual Status PrepareCollective(BackendHandle& handle) {
    (void)handle;
    return OkStatus();
  }
  // Called first: what of the preparation may take long (the formation of that
  // communicator; a spanning combine's wait for its dispatch's counts to reach the host)
  // starts here, off the worker. True when it started: `done` is then called once (any
  // thread) with its outcome, and the worker holds the handle's lane until then (the rank's
  // other groups go on) before it calls PrepareCollective, or fails the op with a failed
  // outcome. False when nothing is to wait for.
  virtual bool PrepareInBackground(BackendHandle& /*handle*/, CollectiveKind /*kind*/,
                                   std::function<void(Status)> /*done*/) {
    return false;
  }
  virtual Status UpdateHandle(BackendHandle& handle, const UpdateArgs& args) = 0;
  // This rank's next collective of the handle's group. An error return means nothing was
  // enqueued but the op's sequence number is taken and abandoned (peers fail at once).
  virtual Status Dispatch(BackendHandle& handle, const DispatchArgs& args) = 0;
  virtual Status Combine(BackendHandle& handle, const CombineArgs& args) = 0;
  // This rank gives up its next collective (e.g. its routing failed): takes the sequence
  // number, and the peers' op fails with `reason` (naming this rank) as soon as the abandon
  // reaches the stream, in order after this rank's earlier ops.
  virtual void Abandon(BackendHandle& handle, CollectiveKind kind, const Status& reason) = 0;
  // The part of the handle's last op that can be enqueued only once the device finished what
  // the handle's lane holds so far: a high-throughput dispatch spanning daemons sizes its
  // payload exchange by the counts its first exchange delivers. True after an op that left
  // one. The rank worker then answers the op (the frontend may signal its wait fence only
  // then), holds the lane's later ops, and once Complete reported the lane done calls
  // EnqueueDeferred before them; the rank's other lanes go on meanwhile. EnqueueDeferred may
  // still wait for the device, bounded by twice op_timeout. An error fails the op as a device
  // error does, and the backend has already failed it on the device (peers and the op's
  // signal do not wait on it).
  virtual bool HasDeferred(BackendHandle& /*handle*/) { return false; }
  virtual Status EnqueueDeferred(BackendHandle& /*handle*/) { return OkStatus(); }
  // Calls `done` once all work enqueued so far on `handle`'s lane finished; never blocks the
  // caller.
  virtual void Complete(BackendHandle& handle, std::function<void(Status)> done) = 0;

  // Every op of `group` issued so far (on any rank, waiting or still queued) stops waiting now
  // and fails with `reason`; the ranks' sequence numbers are realigned, so the group's next
  // ops work again. Called when a member's session ends.
  virtual void AbortGroup(BackendGroup& group, const Status& reason) = 0;
  // The daemon stops: every wait, host and device, current and future, gives up now with
  // UNAVAILABLE instead of running to op_timeout.
  virtual void BeginShutdown() = 0;
  // Liveness of the backend's own threads (completion threads): an error naming the one busy
  // with a single item for longer than `limit`. Backends without threads are always live.
  virtual Status CheckLiveness(std::chrono::milliseconds /*limit*/) const { return OkStatus(); }

  // --- the frontend-launched data path (backends with a device data plane) ---
  // Exports `handle`'s private region and sync area; FAILED_PRECONDITION where the backend
  // has no device data plane (cpu: frontends use the daemon's ops).
  virtual StatusOr<DataPlaneExport> ExportDataPlane(BackendGroup& group, BackendHandle& handle);
  // Called when the group's ops move to frontends (dead_group_rank < 0), and when a
  // frontend-launched rank's frontend ended, maybe mid-op (dead_group_rank >= 0). Marks the
  // dead rank's ops abandoned (so survivors waiting for it are released at once) and clears
  // its sync area (its kernels are gone with its context) and returns a sequence base above every op sequence
  // number any rank used on the group so far, plus kGroupResetSequenceGap; the daemon's own
  // numbering continues from it too.
  virtual StatusOr<uint64_t> ResetDataPlane(BackendGroup& group, int dead_group_rank);
};

}  // namespace epd
