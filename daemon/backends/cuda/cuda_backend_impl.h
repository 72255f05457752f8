// CudaBackend's declaration and per-rank state, shared by its two implementation files:
// cuda_backend.cc (GPUs, memory, groups, handles, completion) and cuda_ops.cc (the op
// launches). Internal to the backend: nothing outside daemon/backends/cuda includes it.
#pragma once

#include <cuda_runtime.h>

#include <memory>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <string>
#include <vector>

#include "common/limits.h"
#include "daemon/backends/cuda/completion_thread.h"
#include "daemon/backends/cuda/cuda_backend.h"
#include "daemon/backends/cuda/cuda_objects.h"
#include "daemon/backends/cuda/cuda_stream.h"
#include "daemon/backends/cuda/error_records.h"
#include "daemon/backends/cuda/ipc_mapping.h"
#include "daemon/backends/cuda/op_lane.h"
#include "daemon/backends/cuda/reclaimer.h"
#include "daemon/core/lane_registry.h"
#include "kernels/collective_launch.cuh"
#include "kernels/device_error.cuh"

namespace epd::cuda {

constexpr int kBlocksPerSm = 2;  // what their registers allow; more warps hide NVLink latency

// Everything of one node rank (GPU). Ops run on the lanes of the rank's groups (op_lane.h).
struct RankState {
  int device = 0;
  NodeGpu info;
  int sm_count = 0;
  std::unique_ptr<CudaStream> setup_stream;  // zero-fill of new allocations, never ops
};

// The core checks tensors before ops reach a backend; callers that drive the backend directly
// (GPU tests, the bench) get the same protection against a short or mistyped tensor.
Status CheckTokenRows(const TensorView& t, const GroupConfig& c, int n, std::string_view op,
                      std::string_view field);
// Combine's arguments for n tokens: `out`, and an `expert_out` with fp8 dispatch (recv_x holds
// e4m3 codes then). Both data paths of the daemon (one daemon, spanning) check alike.
Status CheckCombineArgs(const GroupConfig& c, const CombineArgs& args, int n);

class CudaBackend final : public Backend {
 public:
  static StatusOr<std::unique_ptr<CudaBackend>> Create(const CudaBackendOptions& options);
  ~CudaBackend() override = default;

  NodeDescription Describe() const override;
  int num_ranks() const override { return static_cast<int>(ranks_.size()); }
  AllocationCounter& allocations() override { return allocations_; }
  std::chrono::milliseconds op_timeout() const override { return options_.op_timeout; }

  StatusOr<std::shared_ptr<Memory>> Import(const MemorySource& source, int node_rank) override;
  StatusOr<std::unique_ptr<ExportedMemory>> CreateFence(int node_rank) override;
  StatusOr<std::unique_ptr<BackendGroup>> CreateGroup(const GroupConfig& config) override;
  StatusOr<std::unique_ptr<BackendHandle>> CreateHandle(BackendGroup& group,
                                                        int group_rank) override;

  Status WaitFence(BackendHandle& handle, ExportedMemory& fence, uint64_t value) override;
  Status SignalFence(BackendHandle& handle, ExportedMemory& fence, uint64_t value) override;
  // Each op's last kernel writes its fence signal: no stream write after it.
  bool FoldsFenceSignals() const override { return true; }
  // A spanning group's communicator, formed before the op's fence wait (in the background
  // when it is missing), and a spanning combine's wait for its dispatch's counts
  // (cuda_span_ops.cc).
  bool PrepareInBackground(BackendHandle& handle, CollectiveKind kind,
                           std::function<void(Status)> done) override;
  Status PrepareCollective(BackendHandle& handle) override;
  Status UpdateHandle(BackendHandle& handle, const UpdateArgs& args) override;
  Status Dispatch(BackendHandle& handle, const DispatchArgs& args) override;
  Status Combine(BackendHandle& handle, const CombineArgs& args) override;
  void Abandon(BackendHandle& handle, CollectiveKind kind, const Status& reason) override;
  bool HasDeferred(BackendHandle& handle) override;
  Status EnqueueDeferred(BackendHandle& handle) override;
  void Complete(BackendHandle& handle, std::function<void(Status)> done) override;
  void AbortGroup(BackendGroup& group, const Status& reason) override;
  void BeginShutdown() override;
  Status CheckLiveness(std::chrono::milliseconds limit) const override;
  StatusOr<DataPlaneExport> ExportDataPlane(BackendGroup& group, BackendHandle& handle) override;
  StatusOr<uint64_t> ResetDataPlane(BackendGroup& group, int dead_group_rank) override;
  size_t pending_closes() const { return reclaimer_.pending_closes(); }
  // Multi-node: the cluster spanning groups meet through (set once, before any group).
  void AttachCluster(std::shared_ptr<ClusterStore> cluster);

 private:
  explicit CudaBackend(CudaBackendOptions options) : options_(std::move(options)) {}
  Status CheckNodeRank(int node_rank) const;
  StatusOr<CudaExportedMemory*> FenceOf(int node_rank, ExportedMemory& fence) const;
  // Where and what an op's folded signal writes (no counter: the op signals nothing).
  StatusOr<kernels::DeviceFenceSignal> DeviceSignal(int node_rank,
                                                    const FenceSignal& signal) const;
  // Held by every call that enqueues device work, so the Reclaimer sees the GPUs idle only
  // while nothing can start (reclaimer.h).
  std::shared_lock<std::shared_mutex> Launching() { return reclaimer_.Launching(); }
  uint64_t timeout_ns() const {
    return static_cast<uint64_t>(options_.op_timeout.count()) * 1000000ull;
  }
  // Dispatch of a high-throughput group (cuda_ht_ops.cc), op `seq` already taken.
  Status DispatchHighThroughput(CudaHandle& handle, uint64_t seq, const DispatchArgs& args);
  // Marks op `seq` of `handle`'s rank abandoned on its stream (peers fail it at once).
  void AbandonOp(CudaHandle& handle, uint64_t seq, CollectiveKind kind, const Status& reason);
  Status SignalAfterSpanOp(CudaHandle& me, const FenceSignal& signal);
  // The group and op fields of a collective launch of op `seq` (kernels/collective_launch.cuh),
  // with its folded signal and its error record claimed on the handle's lane: call it last,
  // right before the launch. On a bad fence the op is abandoned.
  StatusOr<kernels::CollectiveLaunch> CollectiveLaunchOf(CudaHandle& handle, uint64_t seq,
                                                         CollectiveKind kind,
                                                         const FenceSignal& signal);
  // Copies `bytes` into every group rank's PeerTable at `offset`, synchronously.
  Status WritePeerTables(CudaGroup& group, size_t offset, const void* data, size_t bytes);
  void ForgetGroup(CudaGroup* group);
  // Groups that span daemons (cuda_span_ops.cc): NCCL between daemons, op `seq` already taken.
  StatusOr<std::unique_ptr<CudaGroup>> CreateSpanningGroup(const GroupConfig& config);
  StatusOr<std::unique_ptr<BackendHandle>> CreateSpanningHandle(CudaGroup& group, int group_rank);
  Status SpanDispatch(CudaHandle& handle, uint64_t seq, const DispatchArgs& args);
  // High-throughput: the part of a dispatch after its counts arrived (EnqueueDeferred).
  Status SpanDispatchRest(CudaHandle& handle, const CudaHandle::SpanPending& pending);
  // Expert-major low-latency: reads the last dispatch's return rows when the combine comes.
  Status ReadSpanRows(CudaHandle& handle);
  // Waits (bounded; UNAVAILABLE once `generation` is no longer live) until the last dispatch's
  // headers are on the host, then reads every pair's rows into span_rows_ (zeros on failure).
  Status AwaitSpanRows(CudaHandle& handle, int64_t generation, std::string_view what);
  // The destination half of a dispatch whose messages arrived (or whose failure the kernels
  // record), and its fence signal.
  Status SpanAssembleAndSignal(CudaHandle& handle, uint64_t seq, const FenceSignal& signal);
  Status SpanCombine(CudaHandle& handle, uint64_t seq, const CombineArgs& args);
  void SpanAbandon(CudaHandle& handle, uint64_t seq, CollectiveKind kind, const Status& reason);

  CudaBackendOptions options_;
  // NOTE: before everything that holds memory: it all goes back through the reclaimer, the
  // process's (reclaimer.h), which outlives every backend holding it.
  std::shared_ptr<Reclaimer> shared_reclaimer_ = Reclaimer::Shared(2 * options_.op_timeout);
  Reclaimer& reclaimer_ = *shared_reclaimer_;
  AllocationCounter allocations_;
  AllocationCounter ring_allocations_;  // the lanes' error-record rings (op_lane.h)
  ImportCache imports_{reclaimer_};
  // Host-mapped word the fence-wait kernels poll: non-zero once the daemon shuts down.
  std::unique_ptr<PinnedHostMemory> shutdown_word_;
  // NOTE: before ranks_: a completion thread may drop the last reference to a group while
  // ranks_ is destroyed, and the group then unregisters here.
  std::mutex groups_mu_;
  std::set<CudaGroup*> groups_;  // live groups, whose abort words shutdown raises
  bool shutting_down_ = false;   // guarded by groups_mu_
  std::vector<std::unique_ptr<RankState>> ranks_;
  std::vector<std::vector<bool>> peer_access_;
  std::shared_ptr<ClusterStore> cluster_;  // null: running alone
  // NOTE: last member: the lanes run their last completions, which may destroy groups (they
  // unregister above), before anything else goes.
  LaneRegistry<OpLane> lanes_;
};

}  // namespace epd::cuda
