#include "daemon/backends/cuda/cuda_backend.h"

#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <limits>
#include <mutex>

#include "daemon/backends/cuda/completion_thread.h"
#include "daemon/backends/cuda/cuda_check.h"
#include "daemon/backends/cuda/cuda_objects.h"
#include "daemon/backends/cuda/cuda_stream.h"
#include "daemon/backends/cuda/driver_api.h"
#include "daemon/backends/cuda/error_records.h"
#include "daemon/backends/cuda/ipc_mapping.h"
#include "daemon/backends/cuda/nccl_comms.h"
#include "daemon/core/fence_page.h"
#include "daemon/core/log.h"
#include "kernels/combine.cuh"
#include "kernels/dispatch.cuh"
#include "kernels/fence_wait.cuh"
#include "kernels/routing.cuh"
#include "kernels/sync_area.cuh"

namespace epd {
namespace cuda {
namespace {

constexpr int kWarpsPerBlock = 16;  // the collective kernels' 512 threads
constexpr int kBlocksPerSm = 2;     // what their registers allow; more warps hide NVLink latency

// A warp per work item, at most `max_blocks` (the kernels stride over the rest).
int GridBlocks(int64_t items, int max_blocks) {
  return static_cast<int>(
      std::clamp<int64_t>((items + kWarpsPerBlock - 1) / kWarpsPerBlock, 1, max_blocks));
}

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

std::string FormatUuid(const cudaUUID_t& uuid) {
  const auto* b = reinterpret_cast<const unsigned char*>(uuid.bytes);
  return fmt::format(
      "GPU-{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}"
      "{:02x}{:02x}",
      b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
      b[15]);
}

int TokenType(DType dtype) {
  switch (dtype) {
    case DType::kBf16:
      return kernels::kTokenBf16;
    case DType::kFp16:
      return kernels::kTokenFp16;
    default:
      return kernels::kTokenFp32;
  }
}

bool IsShape(const TensorView& t, int64_t rows, int64_t cols) {
  return t.shape.size() == 2 && t.shape[0] == rows && t.shape[1] == cols;
}

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

StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Create(const CudaBackendOptions& options) {
  std::unique_ptr<CudaBackend> backend(new CudaBackend(options));
  int count = 0;
  if (cudaError_t e = cudaGetDeviceCount(&count); e != cudaSuccess || count == 0) {
    cudaGetLastError();
    return UnavailableError("no CUDA GPU: cudaGetDeviceCount gave {} ({})", count,
                            e == cudaSuccess ? "no devices" : cudaGetErrorString(e));
  }
  EPD_RETURN_IF_ERROR(Driver().status());
  std::vector<int> devices = options.devices;
  if (devices.empty()) {
    for (int d = 0; d < count; ++d) devices.push_back(d);
  }
  if (static_cast<int>(devices.size()) > kernels::kMaxRanks) {
    return InvalidArgumentError("{} GPUs configured; the cuda backend drives at most {}",
                                devices.size(), kernels::kMaxRanks);
  }
  for (int device : devices) {
    if (device < 0 || device >= count) {
      return InvalidArgumentError("GPU {} does not exist ({} visible)", device, count);
    }
    auto rank = std::make_unique<RankState>();
    rank->device = device;
    EPD_CUDA_CHECK(cudaSetDevice(device));
    cudaDeviceProp prop;
    EPD_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    rank->info.index = static_cast<int>(backend->ranks_.size());
    rank->info.name = prop.name;
    rank->info.uuid = FormatUuid(prop.uuid);
    rank->info.total_memory_bytes = prop.totalGlobalMem;
    rank->info.compute_capability = prop.major * 10 + prop.minor;
    rank->sm_count = prop.multiProcessorCount;
    EPD_ASSIGN_OR_RETURN(rank->stream, CudaStream::Create(device));
    EPD_ASSIGN_OR_RETURN(rank->setup_stream, CudaStream::Create(device));
    EPD_ASSIGN_OR_RETURN(rank->records, ErrorRecords::Create(backend->allocations_));
    rank->completion =
        std::make_unique<CompletionThread>(device, *rank->records, options.on_fatal_error);
    backend->ranks_.push_back(std::move(rank));
  }
  // Peer access between every pair of local GPUs: collectives use plain peer pointers.
  const size_t n = devices.size();
  backend->peer_access_.assign(n, std::vector<bool>(n, false));
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < n; ++j) {
      if (devices[i] == devices[j]) {
        backend->peer_access_[i][j] = true;
        continue;
      }
      int can = 0;
      EPD_CUDA_CHECK(cudaDeviceCanAccessPeer(&can, devices[i], devices[j]));
      if (!can) continue;
      EPD_CUDA_CHECK(cudaSetDevice(devices[i]));
      cudaError_t e = cudaDeviceEnablePeerAccess(devices[j], 0);
      if (e == cudaErrorPeerAccessAlreadyEnabled) {
        cudaGetLastError();
        e = cudaSuccess;
      }
      EPD_CUDA_CHECK(e);
      backend->peer_access_[i][j] = true;
    }
  }
  for (const auto& rank : backend->ranks_) {
    EPD_LOG(kCuda, info, "rank {}: GPU {} {} ({}, {} GiB, sm_{}, {} SMs)", rank->info.index,
            rank->device, rank->info.name, rank->info.uuid, rank->info.total_memory_bytes >> 30,
            rank->info.compute_capability, rank->sm_count);
  }
  return backend;
}

NodeDescription CudaBackend::Describe() const {
  NodeDescription d;
  d.backend = "cuda";
  d.ranks = num_ranks();
  for (const auto& rank : ranks_) d.gpus.push_back(rank->info);
  d.nccl_version = NcclVersionString();
  return d;
}

Status CudaBackend::CheckNodeRank(int node_rank) const {
  if (node_rank < 0 || node_rank >= num_ranks()) {
    return InvalidArgumentError("node rank {} is outside [0, {})", node_rank, num_ranks());
  }
  return OkStatus();
}

kernels::DeviceError* CudaBackend::ClaimRecord(int node_rank, PendingOp op) {
  RankState& rank = *ranks_[node_rank];
  kernels::DeviceError* record = rank.records->Claim(&op.record);
  std::lock_guard<std::mutex> lock(rank.mu);
  rank.pending.push_back(std::move(op));
  return record;
}

StatusOr<std::shared_ptr<Memory>> CudaBackend::Import(const MemorySource& source, int node_rank) {
  EPD_RETURN_IF_ERROR(CheckNodeRank(node_rank));
  if (source.kind != MemorySource::Kind::kCudaIpc) {
    return InvalidArgumentError(
        "the cuda backend imports CUDA IPC memory only; got host shared memory '{}'",
        source.shm_name);
  }
  if (source.device >= 0 && source.device != node_rank &&
      (source.device >= num_ranks() || !peer_access_[node_rank][source.device])) {
    return InvalidArgumentError("memory on device {} is not reachable from node rank {}",
                                source.device, node_rank);
  }
  EPD_ASSIGN_OR_RETURN(std::shared_ptr<IpcMapping> mapping,
                       imports_.Get(source.ipc_handle, ranks_[node_rank]->device));
  const uint64_t available = mapping->allocation_bytes();
  if (source.offset > available || source.size > available - source.offset) {
    return InvalidArgumentError("offset {} + size {} exceeds the IPC allocation of {} bytes",
                                source.offset, source.size, available);
  }
  return std::shared_ptr<Memory>(
      std::make_shared<ImportedMemory>(std::move(mapping), node_rank, source.offset, source.size));
}

StatusOr<std::unique_ptr<ExportedMemory>> CudaBackend::CreateFence(int node_rank) {
  EPD_RETURN_IF_ERROR(CheckNodeRank(node_rank));
  RankState& rank = *ranks_[node_rank];
  EPD_ASSIGN_OR_RETURN(
      auto page, CudaExportedMemory::Create(node_rank, rank.device, kFencePageBytes, allocations_,
                                            rank.setup_stream->get()));
  const FencePageHeader header = MakeFencePageHeader();
  EPD_CUDA_CHECK(cudaMemcpyAsync(page->data(), &header, sizeof(header), cudaMemcpyHostToDevice,
                                 rank.setup_stream->get()));
  EPD_CUDA_CHECK(cudaStreamSynchronize(rank.setup_stream->get()));
  return std::unique_ptr<ExportedMemory>(std::move(page));
}

StatusOr<std::unique_ptr<BackendGroup>> CudaBackend::CreateGroup(const GroupConfig& config) {
  EPD_RETURN_IF_ERROR(config.Validate(num_ranks()));
  const int R = config.world_size();
  if (R > kernels::kMaxRanks) {
    return InvalidArgumentError("group '{}': {} ranks; the cuda backend supports at most {}",
                                config.name, R, kernels::kMaxRanks);
  }
  for (int a : config.ranks) {
    for (int b : config.ranks) {
      if (!peer_access_[a][b]) {
        return FailedPreconditionError(
            "group '{}': GPU of node rank {} cannot access node rank {}'s memory (no P2P)",
            config.name, a, b);
      }
    }
  }
  auto group = std::make_unique<CudaGroup>();
  group->config_ = config;
  group->name_ = std::make_shared<const std::string>(config.name);
  group->seq_ = std::make_unique<uint64_t[]>(R);
  group->sm_count_ = std::numeric_limits<int>::max();
  for (int r = 0; r < R; ++r) {
    RankState& rank = *ranks_[config.ranks[r]];
    group->devices_.push_back(rank.device);
    group->sm_count_ = std::min(group->sm_count_, rank.sm_count);
    EPD_ASSIGN_OR_RETURN(
        auto sync, DeviceMemory::Create(rank.device, kernels::SyncAreaBytes(R, config.experts),
                                        allocations_, rank.setup_stream->get()));
    group->sync_.push_back(std::move(sync));
  }
  group->max_blocks_ = kBlocksPerSm * group->sm_count_;
  if (options_.max_blocks_per_op > 0) {
    group->max_blocks_ = std::min(group->max_blocks_, options_.max_blocks_per_op);
  }
  if (options_.create_nccl_comms) {
    std::vector<int> sorted = group->devices_;
    std::sort(sorted.begin(), sorted.end());
    if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) {
      return FailedPreconditionError(
          "group '{}': its ranks share GPUs, and NCCL needs one GPU per rank", config.name);
    }
    EPD_ASSIGN_OR_RETURN(group->comms_, NcclComms::Create(group->devices_));
  }
  EPD_LOG(kCuda, info, "created {}", config.ToString());
  return std::unique_ptr<BackendGroup>(std::move(group));
}

StatusOr<std::unique_ptr<BackendHandle>> CudaBackend::CreateHandle(BackendGroup& g,
                                                                   int group_rank) {
  auto& group = static_cast<CudaGroup&>(g);
  const GroupConfig& c = group.config_;
  if (group_rank < 0 || group_rank >= c.world_size()) {
    return InvalidArgumentError("group '{}': group rank {} is outside [0, {})", c.name, group_rank,
                                c.world_size());
  }
  auto handle = std::make_unique<CudaHandle>();
  handle->group_ = &group;
  handle->group_rank_ = group_rank;
  handle->node_rank_ = c.ranks[group_rank];
  handle->layout_ = ComputeHandleLayout(c);
  handle->private_layout_ = ComputePrivateLayout(c);
  RankState& rank = *ranks_[handle->node_rank_];
  EPD_ASSIGN_OR_RETURN(
      handle->exported_,
      CudaExportedMemory::Create(handle->node_rank_, rank.device, handle->layout_.exported_bytes,
                                 allocations_, rank.setup_stream->get()));
  EPD_ASSIGN_OR_RETURN(handle->private_,
                       DeviceMemory::Create(rank.device, handle->private_layout_.bytes,
                                            allocations_, rank.setup_stream->get()));
  return std::unique_ptr<BackendHandle>(std::move(handle));
}

StatusOr<CudaExportedMemory*> CudaBackend::FenceOf(int node_rank, ExportedMemory& fence) const {
  auto* page = dynamic_cast<CudaExportedMemory*>(&fence);
  if (page == nullptr || page->size() < kFencePageBytes) {
    return InvalidArgumentError("not a fence page of the cuda backend");
  }
  if (page->device() != node_rank) {
    return InvalidArgumentError("fence lives on node rank {}, the op runs on node rank {}",
                                page->device(), node_rank);
  }
  return page;
}

Status CudaBackend::WaitFence(int node_rank, ExportedMemory& fence, uint64_t value) {
  EPD_RETURN_IF_ERROR(CheckNodeRank(node_rank));
  EPD_ASSIGN_OR_RETURN(CudaExportedMemory * page, FenceOf(node_rank, fence));
  RankState& rank = *ranks_[node_rank];
  EPD_CUDA_CHECK(cudaSetDevice(rank.device));
  const auto* counter =
      reinterpret_cast<const uint64_t*>(static_cast<char*>(page->data()) + kFenceCounterOffset);
  kernels::DeviceError* record =
      ClaimRecord(node_rank, PendingOp{0, "fence wait", nullptr, node_rank, value});
  EPD_CUDA_CHECK(
      kernels::LaunchFenceWait(counter, value, timeout_ns(), record, rank.stream->get()));
  return OkStatus();
}

Status CudaBackend::SignalFence(int node_rank, ExportedMemory& fence, uint64_t value) {
  EPD_RETURN_IF_ERROR(CheckNodeRank(node_rank));
  EPD_ASSIGN_OR_RETURN(CudaExportedMemory * page, FenceOf(node_rank, fence));
  RankState& rank = *ranks_[node_rank];
  EPD_CUDA_CHECK(cudaSetDevice(rank.device));
  const auto counter =
      reinterpret_cast<CUdeviceptr>(static_cast<char*>(page->data()) + kFenceCounterOffset);
  // Default flags: the write is ordered after, and flushes, all prior work on the stream.
  EPD_ASSIGN_OR_RETURN(const DriverApi* driver, Driver());
  EPD_CU_CHECK(driver->stream_write_value64(rank.stream->get(), counter, value,
                                            CU_STREAM_WRITE_VALUE_DEFAULT));
  return OkStatus();
}

Status CudaBackend::UpdateHandle(BackendHandle& h, const UpdateArgs& args) {
  auto& handle = static_cast<CudaHandle&>(h);
  const GroupConfig& c = handle.group_->config_;
  const int n = args.num_tokens, K = c.top_k;
  if (n < 0 || n > c.max_tokens_per_rank) {
    return InvalidArgumentError("num_tokens={} is outside [0, max_tokens_per_rank={}]", n,
                                c.max_tokens_per_rank);
  }
  const TensorView& idx = args.topk_idx;
  if (idx.dtype != DType::kInt32 && idx.dtype != DType::kInt64) {
    return InvalidArgumentError("topk_idx dtype is {}, expected int32 or int64",
                                DTypeName(idx.dtype));
  }
  if (!IsShape(idx, n, K) || (n > 0 && idx.data == nullptr)) {
    return InvalidArgumentError("topk_idx must be [{}, {}]", n, K);
  }
  const TensorView& w = args.topk_weights;
  if (w.data != nullptr && (w.dtype != DType::kFp32 || !IsShape(w, n, K))) {
    return InvalidArgumentError("topk_weights must be fp32 [{}, {}], got {} with {} dims", n, K,
                                DTypeName(w.dtype), w.shape.size());
  }
  RankState& rank = *ranks_[handle.node_rank_];
  EPD_CUDA_CHECK(cudaSetDevice(rank.device));
  const HandlePrivateLayout& p = handle.private_layout_;
  kernels::RoutingParams params;
  params.topk_idx = idx.data;
  params.idx_is_int64 = idx.dtype == DType::kInt64;
  params.topk_weights = static_cast<const float*>(w.data);
  params.num_tokens = n;
  params.top_k = K;
  params.experts = c.experts;
  params.local_experts = c.local_experts();
  params.max_tokens = c.max_tokens_per_rank;
  params.group_rank = handle.group_rank_;
  params.rank_major = c.layout == Layout::kRankMajor;
  params.topk_out = handle.priv<int32_t>(p.topk_idx);
  params.weights_out = handle.priv<float>(p.topk_weights);
  params.expert_counts = handle.priv<int32_t>(p.expert_counts);
  params.local_rank = handle.priv<int32_t>(p.local_rank);
  params.slot = handle.priv<int32_t>(p.slot);
  params.bound_tokens = handle.priv<int32_t>(p.bound_tokens);
  params.error = ClaimRecord(handle.node_rank_,
                             PendingOp{0, "update", handle.group_->name_, handle.group_rank_, 0});
  EPD_CUDA_CHECK(kernels::LaunchBindRouting(params, rank.stream->get()));
  handle.num_tokens_.store(n, std::memory_order_relaxed);
  return OkStatus();
}

template <typename Args>
StatusOr<std::vector<CudaHandle*>> CudaBackend::CollectiveHandles(const CudaGroup& group,
                                                                  const std::vector<Args>& all,
                                                                  const char* op) const {
  const GroupConfig& c = group.config_;
  if (static_cast<int>(all.size()) != c.world_size()) {
    return InvalidArgumentError("{} of group '{}': {} ranks' arguments, expected {}", op, c.name,
                                all.size(), c.world_size());
  }
  std::vector<CudaHandle*> handles;
  for (int r = 0; r < c.world_size(); ++r) {
    auto* h = dynamic_cast<CudaHandle*>(all[r].handle);
    if (h == nullptr || h->group_ != &group || h->group_rank_ != r) {
      return InvalidArgumentError("{} of group '{}': argument {} is not a handle of group rank {}",
                                  op, c.name, r, r);
    }
    handles.push_back(h);
  }
  return handles;
}

Status CudaBackend::Dispatch(BackendGroup& g, int group_rank,
                             const std::vector<DispatchArgs>& all) {
  auto& group = static_cast<CudaGroup&>(g);
  const GroupConfig& c = group.config_;
  EPD_ASSIGN_OR_RETURN(std::vector<CudaHandle*> handles, CollectiveHandles(group, all, "dispatch"));
  // The sequence number advances even when this rank rejects its own arguments below, so
  // the next collective lines up again on every rank (the peers of this one time out).
  const uint64_t seq = ++group.seq_[group_rank];
  CudaHandle& me = *handles[group_rank];
  const TensorView& x = all[group_rank].x;
  const int n = me.num_tokens();
  if (x.dtype != c.dtype || x.shape.size() != 2 || x.shape[0] < n || x.shape[1] != c.hidden ||
      (n > 0 && x.data == nullptr)) {
    return InvalidArgumentError("dispatch of group '{}': x must be {} [>= {}, {}]", c.name,
                                DTypeName(c.dtype), n, c.hidden);
  }
  RankState& rank = *ranks_[me.node_rank_];
  EPD_CUDA_CHECK(cudaSetDevice(rank.device));
  const HandlePrivateLayout& p = me.private_layout_;
  kernels::DispatchParams params;
  params.world_size = c.world_size();
  params.rank = group_rank;
  params.experts = c.experts;
  params.local_experts = c.local_experts();
  params.top_k = c.top_k;
  params.max_tokens = c.max_tokens_per_rank;
  params.capacity = c.capacity();
  params.rank_major = c.layout == Layout::kRankMajor;
  params.row_bytes = static_cast<int64_t>(c.hidden) * DTypeSize(c.dtype);
  params.x = x.data;
  params.topk_idx = me.priv<int32_t>(p.topk_idx);
  params.topk_weights = me.priv<float>(p.topk_weights);
  params.expert_counts = me.priv<int32_t>(p.expert_counts);
  params.local_rank = me.priv<int32_t>(p.local_rank);
  params.bound_tokens = me.priv<int32_t>(p.bound_tokens);
  params.slot = me.priv<int32_t>(p.slot);
  params.recv_counts =
      me.recv<int32_t>(me.layout_.recv_counts_offset, me.layout_.recv_counts_bytes);
  params.recv_offsets =
      me.recv<int32_t>(me.layout_.recv_offsets_offset, me.layout_.recv_offsets_bytes);
  for (int d = 0; d < c.world_size(); ++d) {
    const CudaHandle& peer = *handles[d];
    const HandleLayout& l = peer.layout_;
    kernels::DispatchPeer& out = params.peers[d];
    out.sync = group.sync_[d]->data();
    out.recv_x = peer.recv<char>(l.recv_x_offset, l.recv_x_bytes);
    out.recv_src = peer.recv<int32_t>(l.recv_src_offset, l.recv_src_bytes);
    out.recv_weights = peer.recv<float>(l.recv_weights_offset, l.recv_weights_bytes);
    out.recv_topk_idx = peer.recv<int32_t>(l.recv_topk_idx_offset, l.recv_topk_idx_bytes);
    out.recv_topk_weights = peer.recv<float>(l.recv_topk_weights_offset, l.recv_topk_weights_bytes);
  }
  params.seq = seq;
  params.timeout_ns = timeout_ns();
  params.error = ClaimRecord(me.node_rank_, PendingOp{0, "dispatch", group.name_, group_rank, seq});
  const int64_t rows =
      params.rank_major ? int64_t{c.world_size()} * c.max_tokens_per_rank : int64_t{n} * c.top_k;
  const int64_t parts = (params.row_bytes / 16 + kernels::kDispatchVectorsPerPart - 1) /
                        kernels::kDispatchVectorsPerPart;
  const int blocks = GridBlocks(rows * parts, group.max_blocks_);
  EPD_CUDA_CHECK(kernels::LaunchDispatch(params, blocks, rank.stream->get()));
  return OkStatus();
}

Status CudaBackend::Combine(BackendGroup& g, int group_rank, const std::vector<CombineArgs>& all) {
  auto& group = static_cast<CudaGroup&>(g);
  const GroupConfig& c = group.config_;
  EPD_ASSIGN_OR_RETURN(std::vector<CudaHandle*> handles, CollectiveHandles(group, all, "combine"));
  const uint64_t seq = ++group.seq_[group_rank];  // see Dispatch
  CudaHandle& me = *handles[group_rank];
  const TensorView& out = all[group_rank].out;
  const int n = me.num_tokens();
  if (out.dtype != c.dtype || out.shape.size() != 2 || out.shape[0] < n ||
      out.shape[1] != c.hidden || (n > 0 && out.data == nullptr)) {
    return InvalidArgumentError("combine of group '{}': out must be {} [>= {}, {}]", c.name,
                                DTypeName(c.dtype), n, c.hidden);
  }
  RankState& rank = *ranks_[me.node_rank_];
  EPD_CUDA_CHECK(cudaSetDevice(rank.device));
  const HandlePrivateLayout& p = me.private_layout_;
  kernels::CombineParams params;
  params.world_size = c.world_size();
  params.rank = group_rank;
  params.top_k = c.top_k;
  params.local_experts = c.local_experts();
  params.hidden = c.hidden;
  params.token_type = TokenType(c.dtype);
  params.rank_major = c.layout == Layout::kRankMajor;
  params.recv_rows = static_cast<int64_t>(me.layout_.recv_rows);
  params.topk_idx = me.priv<int32_t>(p.topk_idx);
  params.topk_weights = me.priv<float>(p.topk_weights);
  params.slot = me.priv<int32_t>(p.slot);
  params.bound_tokens = me.priv<int32_t>(p.bound_tokens);
  params.out = out.data;
  for (int d = 0; d < c.world_size(); ++d) {
    const CudaHandle& peer = *handles[d];
    params.expert_out[d] =
        all[d].expert_out != nullptr
            ? all[d].expert_out
            : peer.recv<char>(peer.layout_.recv_x_offset, peer.layout_.recv_x_bytes);
    params.sync[d] = group.sync_[d]->data();
  }
  params.seq = seq;
  params.timeout_ns = timeout_ns();
  params.error = ClaimRecord(me.node_rank_, PendingOp{0, "combine", group.name_, group_rank, seq});
  const int64_t vectors = static_cast<int64_t>(c.hidden) * DTypeSize(c.dtype) / 16;
  const int64_t chunks =
      (vectors + kernels::kCombineVectorsPerItem - 1) / kernels::kCombineVectorsPerItem;
  const int blocks = GridBlocks(int64_t{n} * chunks, group.max_blocks_);
  EPD_CUDA_CHECK(kernels::LaunchCombine(params, blocks, rank.stream->get()));
  return OkStatus();
}

void CudaBackend::Complete(BackendHandle& h, std::function<void(Status)> done) {
  auto& handle = static_cast<CudaHandle&>(h);
  RankState& rank = *ranks_[handle.node_rank_];
  std::vector<PendingOp> ops;
  {
    std::lock_guard<std::mutex> lock(rank.mu);
    ops.swap(rank.pending);
  }
  rank.completion->Enqueue(rank.stream->get(), std::move(ops), std::move(done));
}

}  // namespace
}  // namespace cuda

StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const CudaBackendOptions& options) {
  EPD_ASSIGN_OR_RETURN(auto backend, cuda::CudaBackend::Create(options));
  return std::unique_ptr<Backend>(std::move(backend));
}

cudaStream_t CudaBackendStream(Backend& backend, int node_rank) {
  auto* cuda = dynamic_cast<cuda::CudaBackend*>(&backend);
  if (cuda == nullptr || node_rank < 0 || node_rank >= cuda->num_ranks()) return nullptr;
  return cuda->stream(node_rank);
}

}  // namespace epd
