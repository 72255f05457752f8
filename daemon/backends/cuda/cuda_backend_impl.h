// CudaBackend's declaration and per-rank state, shared by its two implementation files:
// cuda_backend.cc (GPUs, memory, groups, handles, completion) and cuda_ops.cc (the op
// launches). Internal to the backend: nothing outside daemon/backends/cuda includes it.
#pragma once

#include <cuda_runtime.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "daemon/backends/cuda/completion_thread.h"
#include "daemon/backends/cuda/cuda_backend.h"
#include "daemon/backends/cuda/cuda_objects.h"
#include "daemon/backends/cuda/cuda_stream.h"
#include "daemon/backends/cuda/error_records.h"
#include "daemon/backends/cuda/ipc_mapping.h"
#include "kernels/device_error.cuh"

namespace epd::cuda {

constexpr int kWarpsPerBlock = 16;  // the collective kernels' 512 threads
constexpr int kBlocksPerSm = 2;     // what their registers allow; more warps hide NVLink latency

// Everything of one node rank (GPU). Member order is destruction order reversed: the
// completion thread goes first (it drains its queue), the streams last.
struct RankState {
  int device = 0;
  NodeGpu info;
  int sm_count = 0;
  std::unique_ptr<CudaStream> stream;        // ops
  std::unique_ptr<CudaStream> setup_stream;  // zero-fill of new allocations, never ops
  std::unique_ptr<ErrorRecords> records;
  std::mutex mu;
  std::vector<PendingOp> pending;  // ops enqueued since the last Complete()
  std::unique_ptr<CompletionThread> completion;
};

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

  Status WaitFence(int node_rank, ExportedMemory& fence, uint64_t value) override;
  Status SignalFence(int node_rank, ExportedMemory& fence, uint64_t value) override;
  Status UpdateHandle(BackendHandle& handle, const UpdateArgs& args) override;
  Status Dispatch(BackendGroup& group, int group_rank,
                  const std::vector<DispatchArgs>& all) override;
  Status Combine(BackendGroup& group, int group_rank, const std::vector<CombineArgs>& all) override;
  void Complete(BackendHandle& handle, std::function<void(Status)> done) override;
  StatusOr<DataPlaneExport> ExportDataPlane(BackendGroup& group, BackendHandle& handle) override;
  StatusOr<uint64_t> ResetDataPlane(BackendGroup& group, int dead_group_rank) override;

  cudaStream_t stream(int node_rank) const { return ranks_[node_rank]->stream->get(); }

 private:
  explicit CudaBackend(CudaBackendOptions options) : options_(std::move(options)) {}
  Status CheckNodeRank(int node_rank) const;
  StatusOr<CudaExportedMemory*> FenceOf(int node_rank, ExportedMemory& fence) const;
  // Claims a device error record for an op about to be enqueued on `node_rank`.
  kernels::DeviceError* ClaimRecord(int node_rank, PendingOp op);
  uint64_t timeout_ns() const {
    return static_cast<uint64_t>(options_.op_timeout.count()) * 1000000ull;
  }
  // Checks `all` the same way on every rank (handles are immutable), so every rank of a
  // collective accepts or rejects it alike and nobody waits for a rank that never launches.
  template <typename Args>
  StatusOr<std::vector<CudaHandle*>> CollectiveHandles(const CudaGroup& group,
                                                       const std::vector<Args>& all,
                                                       const char* op) const;

  CudaBackendOptions options_;
  AllocationCounter allocations_;
  ImportCache imports_;
  std::vector<std::unique_ptr<RankState>> ranks_;
  std::vector<std::vector<bool>> peer_access_;
};

}  // namespace epd::cuda
