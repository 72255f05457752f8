#include "daemon/backends/cuda/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <limits>

#include "common/fence_page.h"
#include "common/gpu_uuid.h"
#include "daemon/backends/cuda/cuda_backend_impl.h"
#include "common/cuda_check.h"
#include "common/cuda_driver.h"
#include "daemon/backends/cuda/memory_device.h"
#include "daemon/backends/cuda/nccl_comms.h"
#include "daemon/core/log.h"
#include "kernels/preload.cuh"
#include "kernels/sync_area.cuh"

namespace epd {
namespace cuda {
namespace {

ComputeMode FromCuda(int mode) {
  switch (mode) {
    case cudaComputeModeDefault:
      return ComputeMode::kDefault;
    case cudaComputeModeExclusiveProcess:
      return ComputeMode::kExclusiveProcess;
    case cudaComputeModeProhibited:
      return ComputeMode::kProhibited;
    default:
      return ComputeMode::kUnknown;
  }
}

}  // namespace

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
    rank->info.uuid = FormatGpuUuid(prop.uuid.bytes);
    rank->info.total_memory_bytes = prop.totalGlobalMem;
    rank->info.compute_capability = prop.major * 10 + prop.minor;
    rank->sm_count = prop.multiProcessorCount;
    int mps = 0, compute_mode = -1;
    // NOTE: after cudaSetDevice made the context: whether it is an MPS client is decided then.
    // Informational only: a driver that does not know an attribute leaves it unknown (and the
    // error is cleared) instead of stopping the daemon.
    if (cudaDeviceGetAttribute(&mps, cudaDevAttrMpsEnabled, device) != cudaSuccess) {
      cudaGetLastError();
      mps = 0;
    }
    if (cudaDeviceGetAttribute(&compute_mode, cudaDevAttrComputeMode, device) != cudaSuccess) {
      cudaGetLastError();
      compute_mode = -1;
    }
    rank->info.mps_active = mps != 0;
    rank->info.compute_mode = FromCuda(compute_mode);
    // NOTE: before any op: a lazily loaded kernel's first launch would wait for the device
    // to go idle, i.e. for a fence-wait kernel that spins until the op is answered.
    EPD_CUDA_CHECK(kernels::PreloadKernels());
    EPD_ASSIGN_OR_RETURN(rank->setup_stream, CudaStream::Create(device));
    backend->ranks_.push_back(std::move(rank));
  }
  EPD_ASSIGN_OR_RETURN(backend->shutdown_word_,
                       PinnedHostMemory::Create(sizeof(uint64_t), backend->allocations_));
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
    EPD_LOG(kCuda, info, "rank {}: GPU {} {} ({}, {} GiB, sm_{}, {} SMs, compute mode {}, MPS {})",
            rank->info.index, rank->device, rank->info.name, rank->info.uuid,
            rank->info.total_memory_bytes >> 30, rank->info.compute_capability, rank->sm_count,
            ComputeModeName(rank->info.compute_mode), rank->info.mps_active ? "on" : "off");
    if (!rank->info.mps_active) {
      EPD_LOG(kCuda, info,
              "rank {}: no MPS: ops on the daemon's streams pay a context switch per hand-off "
              "(~200 us); frontends with CUDA default to launching ops themselves",
              rank->info.index);
    }
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

StatusOr<std::shared_ptr<Memory>> CudaBackend::Import(const MemorySource& source, int node_rank) {
  EPD_RETURN_IF_ERROR(CheckNodeRank(node_rank));
  if (source.kind != MemorySource::Kind::kCudaIpc) {
    return InvalidArgumentError(
        "the cuda backend imports CUDA IPC memory only; got host shared memory '{}'",
        source.shm_name);
  }
  std::vector<std::string> uuids;
  for (const auto& rank : ranks_) uuids.push_back(rank->info.uuid);
  EPD_ASSIGN_OR_RETURN(const int device, SourceDevice(source, uuids));
  if (device >= 0 && device != node_rank &&
      (device >= num_ranks() || !peer_access_[node_rank][device])) {
    return InvalidArgumentError("memory on device {} is not reachable from node rank {}", device,
                                node_rank);
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
                                            reclaimer_, rank.setup_stream->get()));
  const FencePageHeader header = MakeFencePageHeader();
  EPD_CUDA_CHECK(cudaMemcpyAsync(page->data(), &header, sizeof(header), cudaMemcpyHostToDevice,
                                 rank.setup_stream->get()));
  EPD_CUDA_CHECK(cudaStreamSynchronize(rank.setup_stream->get()));
  return std::unique_ptr<ExportedMemory>(std::move(page));
}

StatusOr<std::unique_ptr<BackendGroup>> CudaBackend::CreateGroup(const GroupConfig& config) {
  EPD_RETURN_IF_ERROR(config.Validate(num_ranks()));
  if (config.spans_nodes) {
    EPD_ASSIGN_OR_RETURN(std::unique_ptr<CudaGroup> spanning, CreateSpanningGroup(config));
    return std::unique_ptr<BackendGroup>(std::move(spanning));
  }
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
  EPD_ASSIGN_OR_RETURN(std::unique_ptr<CudaGroup> group,
                       CudaGroup::Create(config, allocations_, reclaimer_));
  group->sm_count_ = std::numeric_limits<int>::max();
  for (int r = 0; r < R; ++r) {
    RankState& rank = *ranks_[config.ranks[r]];
    group->devices_.push_back(rank.device);
    group->sm_count_ = std::min(group->sm_count_, rank.sm_count);
    EPD_ASSIGN_OR_RETURN(
        auto sync, CudaExportedMemory::Create(config.ranks[r], rank.device,
                                              kernels::SyncAreaBytes(R, InboxExperts(config)),
                                              allocations_, reclaimer_, rank.setup_stream->get()));
    group->sync_.push_back(std::move(sync));
    EPD_ASSIGN_OR_RETURN(auto table,
                         DeviceMemory::Create(rank.device, sizeof(kernels::PeerTable), allocations_,
                                              reclaimer_, rank.setup_stream->get()));
    group->peer_tables_.push_back(std::move(table));
  }
  // Every rank's SyncArea, published once into every rank's table, and kept for the launches.
  for (int r = 0; r < R; ++r) {
    group->sync_areas_.area[r] = group->sync_[r]->data();
    group->sync_areas_.spans_gpus |= group->devices_[r] != group->devices_[0];
  }
  EPD_RETURN_IF_ERROR(WritePeerTables(*group, offsetof(kernels::PeerTable, sync),
                                      group->sync_areas_.area, sizeof(group->sync_areas_.area)));
  group->max_blocks_ = kBlocksPerSm * group->sm_count_;
  if (options_.max_blocks_per_op > 0) {
    group->max_blocks_ = std::min(group->max_blocks_, options_.max_blocks_per_op);
  }
  if (config.high_throughput()) {
    // The SM budget bounds the grid: one block per SM keeps the other SMs for the frontend.
    group->max_blocks_ = std::min(group->max_blocks_, config.effective_sm_budget());
  }
  if (options_.create_nccl_comms) {
    std::vector<int> sorted = group->devices_;
    std::sort(sorted.begin(), sorted.end());
    if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) {
      return FailedPreconditionError(
          "group '{}': its ranks share GPUs, and NCCL needs one GPU per rank", config.name);
    }
    group->nccl_.Enable(group->devices_);  // built on first use, not here
  }
  {
    std::lock_guard lock(groups_mu_);
    groups_.insert(group.get());
    if (shutting_down_) group->RaiseAbortWord(std::numeric_limits<uint64_t>::max());
  }
  group->forget_ = [this](CudaGroup* g) { ForgetGroup(g); };
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
  if (c.spans_nodes) return CreateSpanningHandle(group, group_rank);
  auto handle = std::make_unique<CudaHandle>();
  handle->group_ = &group;
  handle->group_rank_ = group_rank;
  handle->node_rank_ = c.ranks[group_rank];
  handle->layout_ = ComputeHandleLayout(c);
  handle->private_layout_ = ComputePrivateLayout(c);
  RankState& rank = *ranks_[handle->node_rank_];
  EPD_ASSIGN_OR_RETURN(handle->lane_, group.LaneOf(group_rank, [&]() -> StatusOr<OpLane*> {
    EPD_ASSIGN_OR_RETURN(
        std::unique_ptr<OpLane> lane,
        OpLane::Create(rank.device, fmt::format("group '{}' rank {}", c.name, handle->node_rank_),
                       ring_allocations_, reclaimer_, options_.on_fatal_error));
    return lanes_.Add(std::move(lane));
  }));
  EPD_ASSIGN_OR_RETURN(
      handle->exported_,
      CudaExportedMemory::Create(handle->node_rank_, rank.device, handle->layout_.exported_bytes,
                                 allocations_, reclaimer_, rank.setup_stream->get()));
  EPD_ASSIGN_OR_RETURN(
      handle->private_,
      CudaExportedMemory::Create(handle->node_rank_, rank.device, handle->private_layout_.bytes,
                                 allocations_, reclaimer_, rank.setup_stream->get()));
  // Publish its receive buffers once, in a free slot of this rank's entries of every rank's
  // table; a dispatch names the slot with its counts.
  const int slot = group.ClaimSlot(group_rank);
  if (slot < 0) {
    return ResourceExhaustedError("group '{}' rank {} already has {} handles, the most it can hold",
                                  c.name, group_rank, kernels::kMaxHandleSlots);
  }
  handle->slot_ = slot;
  const HandleLayout& l = handle->layout_;
  kernels::PeerBuffers buffers;
  buffers.recv_x = handle->recv<char>(l.recv_x_offset, l.recv_x_bytes);
  buffers.recv_src = handle->recv<int32_t>(l.recv_src_offset, l.recv_src_bytes);
  buffers.recv_weights = handle->recv<float>(l.recv_weights_offset, l.recv_weights_bytes);
  buffers.recv_topk_idx = handle->recv<int32_t>(l.recv_topk_idx_offset, l.recv_topk_idx_bytes);
  buffers.recv_topk_weights =
      handle->recv<float>(l.recv_topk_weights_offset, l.recv_topk_weights_bytes);
  buffers.recv_scales = handle->recv<char>(l.recv_scales_offset, l.recv_scales_bytes);
  buffers.expert_rows = handle->recv<int32_t>(l.expert_rows_offset, l.expert_rows_bytes);
  const size_t entry =
      offsetof(kernels::PeerTable, handles) +
      (static_cast<size_t>(slot) * kernels::kMaxRanks + group_rank) * sizeof(kernels::PeerBuffers);
  EPD_RETURN_IF_ERROR(WritePeerTables(group, entry, &buffers, sizeof(buffers)));
  return std::unique_ptr<BackendHandle>(std::move(handle));
}

Status CudaBackend::WritePeerTables(CudaGroup& group, size_t offset, const void* data,
                                    size_t bytes) {
  for (int r = 0; r < group.config_.world_size(); ++r) {
    RankState& rank = *ranks_[group.config_.ranks[r]];
    EPD_CUDA_CHECK(cudaSetDevice(rank.device));
    EPD_CUDA_CHECK(cudaMemcpyAsync(group.peer_tables_[r]->data() + offset, data, bytes,
                                   cudaMemcpyHostToDevice, rank.setup_stream->get()));
    EPD_CUDA_CHECK(cudaStreamSynchronize(rank.setup_stream->get()));
  }
  return OkStatus();
}

void CudaBackend::ForgetGroup(CudaGroup* group) {
  {
    std::lock_guard lock(groups_mu_);
    groups_.erase(group);
  }
  for (OpLane* lane : group->TakeLanes()) {
    if (lane != nullptr) lanes_.Retire(lane);
  }
}

void CudaBackend::AbortGroup(BackendGroup& g, const Status& reason) {
  auto& group = static_cast<CudaGroup&>(g);
  const uint64_t through = group.RealignSequences();
  group.aborts_->NoteAbort(through, reason);  // before the word: a released op reads the reason
  group.RaiseAbortWord(through);
  // A spanning group's NCCL exchange in flight would wait for its watchdog otherwise.
  if (group.span_ != nullptr) group.span_->AbortInFlight(reason);
  EPD_LOG(kCuda, info, "group '{}': ops up to {} aborted: {}", group.config_.name, through,
          reason.message());
}

void CudaBackend::BeginShutdown() {
  std::lock_guard lock(groups_mu_);
  shutting_down_ = true;
  std::atomic_ref<uint64_t>(*static_cast<uint64_t*>(shutdown_word_->data()))
      .store(std::numeric_limits<uint64_t>::max(), std::memory_order_release);
  for (CudaGroup* group : groups_) {
    group->aborts_->NoteAbort(std::numeric_limits<uint64_t>::max(),
                              UnavailableError("epd is shutting down"));
    group->RaiseAbortWord(std::numeric_limits<uint64_t>::max());
    if (group->span_ != nullptr) group->span_->Stop(UnavailableError("epd is shutting down"));
  }
}

void CudaBackend::AttachCluster(std::shared_ptr<ClusterStore> cluster) {
  std::lock_guard lock(groups_mu_);
  cluster_ = std::move(cluster);
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

void CudaBackend::Complete(BackendHandle& h, std::function<void(Status)> done) {
  const auto gate = Launching();
  static_cast<CudaHandle&>(h).lane_->Complete(std::move(done));
}

Status CudaBackend::CheckLiveness(std::chrono::milliseconds limit) const {
  Status status;
  lanes_.ForEach([&](const OpLane& lane) {
    const auto busy = lane.busy_for();
    if (status.ok() && busy > limit) {
      status = DeadlineExceededError(
          "the completion thread of {} (GPU {}) has waited {} ms for one op (limit {} ms)",
          lane.name(), lane.device(),
          std::chrono::duration_cast<std::chrono::milliseconds>(busy).count(), limit.count());
    }
  });
  return status;
}

}  // namespace cuda

StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const CudaBackendOptions& options) {
  ReserveHardwareQueues();
  EPD_ASSIGN_OR_RETURN(auto backend, cuda::CudaBackend::Create(options));
  return std::unique_ptr<Backend>(std::move(backend));
}

void ReserveHardwareQueues() {
  // NOTE: a context multiplexes its streams onto CUDA_DEVICE_MAX_CONNECTIONS hardware queues
  // (8 by default). Two streams on one queue are ordered as if they were one: a collective
  // kernel spinning for a peer then holds back the kernel behind it on the other stream, and
  // when that kernel is the peer (ranks sharing a GPU) or feeds it, both wait until the op
  // timeout. 32 (the most) gives every rank stream of a node its own queue. Read when the
  // context is created, so it must be set before the first CUDA call that creates one; a
  // value the operator set is kept.
  setenv("CUDA_DEVICE_MAX_CONNECTIONS", "32", /*overwrite=*/0);
}

void AttachCudaCluster(Backend& backend, std::shared_ptr<ClusterStore> cluster) {
  if (auto* cuda = dynamic_cast<cuda::CudaBackend*>(&backend); cuda != nullptr) {
    cuda->AttachCluster(std::move(cluster));
  }
}

cudaStream_t CudaBackendStream(Backend& backend, BackendHandle& handle) {
  if (dynamic_cast<cuda::CudaBackend*>(&backend) == nullptr) return nullptr;
  auto* cuda_handle = dynamic_cast<cuda::CudaHandle*>(&handle);
  return cuda_handle == nullptr ? nullptr : cuda_handle->lane_->stream();
}

size_t CudaBackendPendingCloses(Backend& backend) {
  auto* cuda = dynamic_cast<cuda::CudaBackend*>(&backend);
  return cuda == nullptr ? 0 : cuda->pending_closes();
}

}  // namespace epd
