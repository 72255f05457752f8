#include "client/epd/frontend_ops.h"

#include <cuda_runtime.h>

#include <atomic>
#include <cstring>

#include "client/epd/data_path.h"
#include "common/cuda_check.h"
#include "common/cuda_copy.h"
#include "common/group_state_page.h"
#include "common/proto_dtype.h"
#include "kernels/combine.cuh"
#include "kernels/device_error_status.h"
#include "kernels/dispatch.cuh"
#include "kernels/ht_dispatch.cuh"
#include "kernels/launch_grid.h"
#include "kernels/preload.cuh"
#include "kernels/routing.cuh"
#include "kernels/sync_area.cuh"

namespace epd {

static_assert(kMaxDataPlaneRanks == kernels::kMaxRanks,
              "the client's descriptor check and the kernels agree on the largest group");
static_assert(kMaxDataPlaneHandleSlots == kernels::kMaxHandleSlots,
              "the client's descriptor check and the kernels agree on the handle slots");

namespace {

enum RecordSlot { kUpdateRecord = 0, kDispatchRecord = 1, kCombineRecord = 2, kRecordSlots = 3 };

}  // namespace

// This frontend's own peer table, in device memory on its GPU: every rank's sync area and
// receive buffers as this process mapped them (the daemon's tables hold the daemon's
// mappings, valid only in its process).
struct FrontendOps::PeerTable {
  kernels::PeerTable* device = nullptr;
  kernels::SyncAreas sync{};  // the table's sync areas, passed by value to every launch
  ~PeerTable() {
    if (device != nullptr) cudaFree(device);
  }
};

// One DeviceError record per op kind in mapped pinned memory: a kernel writes its record only
// on error, so a captured graph may replay ops with the same records.
struct FrontendOps::Records {
  kernels::DeviceError* host = nullptr;
  kernels::DeviceError* device = nullptr;
  uint64_t sequence[kRecordSlots] = {};  // of the op that last used each record (messages)
  uint64_t epoch[kRecordSlots] = {};     // the epoch it was launched in
  ~Records() {
    if (host != nullptr) cudaFreeHost(host);
  }
};

StatusOr<std::unique_ptr<FrontendOps>> FrontendOps::Open(const v1::DataPlaneInfo& info,
                                                         const HandleView& view) {
  EPD_RETURN_IF_ERROR(ValidateDataPlaneInfo(info));
  if (view.handle_id() != info.handle_id() || !view.on_device()) {
    return InvalidArgumentError(
        "the HandleView (handle {}, {}) is not the device receive region of handle {}",
        view.handle_id(), view.on_device() ? "device" : "host", info.handle_id());
  }
  std::unique_ptr<FrontendOps> ops(new FrontendOps());
  ops->info_ = info;
  ops->group_ = info.config().name();
  EPD_CUDA_CHECK(cudaGetDevice(&ops->device_));
  // NOTE: before any op: a lazily loaded kernel's first launch waits for the device to idle.
  EPD_CUDA_CHECK(kernels::PreloadKernels());
  ops->own_recv_ = static_cast<char*>(view.recv_x()) - info.buffers().recv_x_offset();
  EPD_ASSIGN_OR_RETURN(ops->private_, MapMemorySource(info.private_region()));
  const int ranks = info.peers_size();
  for (int r = 0; r < ranks; ++r) {
    const v1::DataPlanePeer& peer = info.peers(r);
    std::unique_ptr<MappedRegion> recv;
    if (r != info.group_rank()) {
      EPD_ASSIGN_OR_RETURN(recv, MapMemorySource(peer.recv()));
    }
    ops->peer_recv_.push_back(std::move(recv));
    EPD_ASSIGN_OR_RETURN(auto sync, MapMemorySource(peer.sync()));
    ops->peer_sync_.push_back(std::move(sync));
  }
  EPD_RETURN_IF_ERROR(ops->BuildPeerTable());
  EPD_ASSIGN_OR_RETURN(ops->state_page_, MapMemorySource(info.state_page()));
  const auto* page = ops->state_page_->at<GroupStatePage>(0);
  if (ops->state_page_->size() < sizeof(GroupStatePage) || page->magic != kGroupStateMagic ||
      page->version != kGroupStateVersion || page->header_bytes != sizeof(GroupStatePage)) {
    return InvalidArgumentError("state_page '{}' is not a version {} group state page",
                                info.state_page().shm_name(), kGroupStateVersion);
  }
  ops->records_ = std::make_unique<Records>();
  void* host = nullptr;
  EPD_CUDA_CHECK(cudaHostAlloc(&host, sizeof(kernels::DeviceError) * kRecordSlots,
                                      cudaHostAllocMapped | cudaHostAllocPortable));
  ops->records_->host = static_cast<kernels::DeviceError*>(host);
  std::memset(host, 0, sizeof(kernels::DeviceError) * kRecordSlots);
  void* device = nullptr;
  EPD_CUDA_CHECK(cudaHostGetDevicePointer(&device, host, 0));
  ops->records_->device = static_cast<kernels::DeviceError*>(device);
  ops->epoch_ = info.epoch();
  ops->sequence_base_ = info.sequence_base();
  return ops;
}

FrontendOps::~FrontendOps() = default;

Status FrontendOps::BuildPeerTable() {
  const v1::HandleBuffers& b = info_.buffers();
  auto table = std::make_unique<kernels::PeerTable>();
  kernels::SyncAreas sync_areas{};
  const int own_device = info_.peers(info_.group_rank()).device();
  for (int r = 0; r < info_.peers_size(); ++r) {
    const v1::DataPlanePeer& peer = info_.peers(r);
    sync_areas.spans_gpus |= peer.device() != own_device;
    char* recv = r == info_.group_rank() ? own_recv_ : static_cast<char*>(peer_recv_[r]->data());
    table->sync[r] = peer_sync_[r]->data();
    sync_areas.area[r] = table->sync[r];
    kernels::PeerBuffers& buffers = table->handles[peer.handle_slot()][r];
    buffers.recv_x = recv + b.recv_x_offset();
    buffers.recv_src = reinterpret_cast<int32_t*>(recv + b.recv_src_offset());
    buffers.recv_weights = reinterpret_cast<float*>(recv + b.recv_weights_offset());
    buffers.recv_topk_idx = reinterpret_cast<int32_t*>(recv + b.recv_topk_idx_offset());
    buffers.recv_topk_weights = reinterpret_cast<float*>(recv + b.recv_topk_weights_offset());
    if (high_throughput()) {
      buffers.expert_rows = reinterpret_cast<int32_t*>(recv + b.expert_rows_offset());
    }
  }
  peer_table_ = std::make_unique<PeerTable>();
  peer_table_->sync = sync_areas;
  EPD_CUDA_CHECK(cudaMalloc(&peer_table_->device, sizeof(kernels::PeerTable)));
  // The caller's first kernel may follow on any stream: the table must have landed.
  return cuda::CopyNow(peer_table_->device, table.get(), sizeof(kernels::PeerTable));
}

Status FrontendOps::FollowEpoch() {
  const auto* page = state_page_->at<GroupStatePage>(0);
  const uint64_t epoch = page->epoch.load(std::memory_order_acquire);
  const uint64_t base = page->sequence_base.load(std::memory_order_relaxed);
  if (page->epoch.load(std::memory_order_acquire) != epoch) {
    return UnavailableError("group '{}' is being reset by the daemon; retry", group_);
  }
  if (epoch == epoch_) return OkStatus();
  epoch_ = epoch;
  sequence_base_ = base;
  collectives_ = 0;
  return UnavailableError(
      "group '{}' was reset by the daemon (epoch {}): a rank's frontend ended; this op was not "
      "launched, the next one starts the new epoch",
      group_, epoch);
}

Status FrontendOps::Update(const void* topk_idx, bool idx_int64, const float* topk_weights,
                           int num_tokens, cudaStream_t stream) {
  const v1::GroupConfig& c = info_.config();
  if (num_tokens < 0 || num_tokens > c.max_tokens_per_rank()) {
    return InvalidArgumentError("num_tokens={} is outside [0, max_tokens_per_rank={}]", num_tokens,
                                c.max_tokens_per_rank());
  }
  if (num_tokens > 0 && topk_idx == nullptr) {
    return InvalidArgumentError("topk_idx is null for {} tokens", num_tokens);
  }
  EPD_RETURN_IF_ERROR(FollowEpoch());
  const v1::HandlePrivateBuffers& p = info_.private_buffers();
  kernels::RoutingParams params;
  params.topk_idx = topk_idx;
  params.idx_is_int64 = idx_int64 ? 1 : 0;
  params.topk_weights = topk_weights;
  params.num_tokens = num_tokens;
  params.top_k = c.top_k();
  params.experts = c.experts();
  params.local_experts = c.experts() / c.ranks_size();
  params.max_tokens = c.max_tokens_per_rank();
  params.group_rank = info_.group_rank();
  params.rank_major = c.layout() == v1::LAYOUT_RANK_MAJOR;
  params.topk_out = private_->at<int32_t>(p.topk_idx_offset());
  params.weights_out = private_->at<float>(p.topk_weights_offset());
  params.expert_counts = private_->at<int32_t>(p.expert_counts_offset());
  params.local_rank = private_->at<int32_t>(p.local_rank_offset());
  params.slot = private_->at<int32_t>(p.slot_offset());
  params.bound_tokens = private_->at<int32_t>(p.bound_tokens_offset());
  params.world_size = c.ranks_size();
  if (high_throughput()) {
    // The bind also plans the packed rows per destination rank (kernels/routing.cuh).
    params.high_throughput = 1;
    params.dest_row = private_->at<int32_t>(p.dest_row_offset());
    params.dest_counts = private_->at<int32_t>(p.dest_counts_offset());
  }
  if (p.route_scratch_bytes() > 0) {
    params.scratch = private_->at<int32_t>(p.route_scratch_offset());
    params.scratch_bytes = p.route_scratch_bytes();
  }
  params.error = records_->device + kUpdateRecord;
  EPD_CUDA_CHECK(kernels::LaunchBindRouting(params, stream));
  num_tokens_ = num_tokens;
  return OkStatus();
}

Status FrontendOps::Dispatch(const void* x, cudaStream_t stream) {
  if (num_tokens_ > 0 && x == nullptr) {
    return InvalidArgumentError("x is null for {} bound tokens", num_tokens_);
  }
  EPD_RETURN_IF_ERROR(FollowEpoch());
  EPD_RETURN_IF_ERROR(high_throughput() ? LaunchHighThroughputDispatch(x, stream)
                                        : LaunchLowLatencyDispatch(x, stream));
  // NOTE: counted once launched: every rank counts the same collectives.
  ++collectives_;
  records_->sequence[kDispatchRecord] = sequence_base_ + collectives_;
  records_->epoch[kDispatchRecord] = epoch_;
  return OkStatus();
}

void FrontendOps::FillCollectiveLaunch(kernels::CollectiveLaunch& launch, int record) const {
  launch.world_size = info_.config().ranks_size();
  launch.rank = info_.group_rank();
  launch.sync = peer_table_->sync;
  launch.peers = peer_table_->device;
  launch.handle_slot = info_.peers(info_.group_rank()).handle_slot();
  // NOTE: no abort word: nothing in this process raises one; waits end at timeout_ns or when
  // a peer gives up (the daemon marks a dead rank's ops abandoned when it resets the group).
  launch.abort = nullptr;
  // NOTE: numbered on the device (seq 0), so a CUDA graph of the launch gets a fresh number
  // on every replay; the epoch's base is the floor (the rank's counter may predate the epoch).
  launch.seq = 0;
  launch.seq_floor = sequence_base_;
  launch.timeout_ns = info_.timeout_ns();
  launch.error = records_->device + record;
}

void FrontendOps::FillDispatchInputs(kernels::DispatchInputs& inputs, const void* x) const {
  const v1::GroupConfig& c = info_.config();
  const v1::HandlePrivateBuffers& p = info_.private_buffers();
  FillCollectiveLaunch(inputs, kDispatchRecord);
  inputs.experts = c.experts();
  inputs.local_experts = c.experts() / c.ranks_size();
  inputs.top_k = c.top_k();
  inputs.max_tokens = c.max_tokens_per_rank();
  // The token dtype's rows, copied: the daemon attaches no fp8 group to this path.
  inputs.row_bytes =
      static_cast<int64_t>(c.hidden()) * static_cast<int64_t>(ProtoDTypeSize(c.dtype()));
  inputs.x = x;
  inputs.topk_idx = private_->at<int32_t>(p.topk_idx_offset());
  inputs.topk_weights = private_->at<float>(p.topk_weights_offset());
  inputs.expert_counts = private_->at<int32_t>(p.expert_counts_offset());
  inputs.local_rank = private_->at<int32_t>(p.local_rank_offset());
  inputs.bound_tokens = private_->at<int32_t>(p.bound_tokens_offset());
  inputs.slot = private_->at<int32_t>(p.slot_offset());
}

Status FrontendOps::LaunchLowLatencyDispatch(const void* x, cudaStream_t stream) {
  const v1::GroupConfig& c = info_.config();
  const v1::HandleBuffers& b = info_.buffers();
  const bool rank_major = c.layout() == v1::LAYOUT_RANK_MAJOR;
  kernels::DispatchParams params;
  FillDispatchInputs(params, x);
  params.capacity = c.expert_capacity() > 0 ? c.expert_capacity()
                                            : c.ranks_size() * c.max_tokens_per_rank();
  params.rank_major = rank_major ? 1 : 0;
  params.recv_counts = reinterpret_cast<int32_t*>(own_recv_ + b.recv_counts_offset());
  params.recv_offsets =
      rank_major ? nullptr : reinterpret_cast<int32_t*>(own_recv_ + b.recv_offsets_offset());
  EPD_CUDA_CHECK(kernels::LaunchDispatch(
      params, kernels::DispatchBlocks(params, num_tokens_, info_.max_blocks()), stream));
  return OkStatus();
}

// The daemon's high-throughput launch (daemon/backends/cuda/cuda_ht_ops.cc) with this
// process's mappings, device-numbered like the low-latency ops.
Status FrontendOps::LaunchHighThroughputDispatch(const void* x, cudaStream_t stream) {
  const v1::GroupConfig& c = info_.config();
  const v1::HandlePrivateBuffers& p = info_.private_buffers();
  const v1::HandleBuffers& b = info_.buffers();
  kernels::HtDispatchParams params;
  FillDispatchInputs(params, x);
  params.recv_capacity = c.recv_capacity();  // resolved by the daemon, checked at Open
  params.dest_row = private_->at<int32_t>(p.dest_row_offset());
  params.dest_counts = private_->at<int32_t>(p.dest_counts_offset());
  params.recv_rank_counts = reinterpret_cast<int32_t*>(own_recv_ + b.recv_rank_counts_offset());
  params.recv_rank_offsets = reinterpret_cast<int32_t*>(own_recv_ + b.recv_rank_offsets_offset());
  params.recv_counts = reinterpret_cast<int32_t*>(own_recv_ + b.recv_counts_offset());
  params.recv_offsets = reinterpret_cast<int32_t*>(own_recv_ + b.recv_offsets_offset());
  // NOTE: the whole SM budget, as the daemon launches it: the kernel strides over its rows.
  EPD_CUDA_CHECK(kernels::LaunchHtDispatch(params, info_.max_blocks(), stream));
  return OkStatus();
}

Status FrontendOps::Combine(void* out, cudaStream_t stream) {
  const v1::GroupConfig& c = info_.config();
  if (num_tokens_ > 0 && out == nullptr) {
    return InvalidArgumentError("out is null for {} bound tokens", num_tokens_);
  }
  EPD_RETURN_IF_ERROR(FollowEpoch());
  const v1::HandlePrivateBuffers& p = info_.private_buffers();
  const v1::HandleBuffers& b = info_.buffers();
  kernels::CombineParams params;
  FillCollectiveLaunch(params, kCombineRecord);
  params.top_k = c.top_k();
  params.local_experts = c.experts() / c.ranks_size();
  params.hidden = c.hidden();
  EPD_ASSIGN_OR_RETURN(const DType dtype, DTypeFromProto(c.dtype(), "config.dtype"));
  params.token_type = kernels::TokenTypeOf(dtype);
  // High-throughput rows are pre-reduced per destination rank like rank-major ones.
  params.rank_major = c.layout() == v1::LAYOUT_RANK_MAJOR || high_throughput();
  params.recv_rows = static_cast<int64_t>(b.recv_rows());
  params.topk_idx = private_->at<int32_t>(p.topk_idx_offset());
  params.topk_weights = private_->at<float>(p.topk_weights_offset());
  params.slot = private_->at<int32_t>(p.slot_offset());
  params.bound_tokens = private_->at<int32_t>(p.bound_tokens_offset());
  params.out = out;
  // The inbox stride: a high-throughput dispatch posts its row counts after the experts'.
  params.experts =
      high_throughput() ? kernels::HtInboxExperts(c.experts(), c.ranks_size()) : c.experts();
  // In place: each rank's expert output is its recv_x, found through this process's peer
  // table (a published address would be the publishing process's mapping).
  params.expert_out = own_recv_ + b.recv_x_offset();
  params.expert_out_in_place = 1;
  const int64_t row_bytes =
      static_cast<int64_t>(c.hidden()) * static_cast<int64_t>(ProtoDTypeSize(c.dtype()));
  params.wide_items = high_throughput() ? 1 : 0;
  EPD_CUDA_CHECK(kernels::LaunchCombine(
      params,
      kernels::CombineBlocks(row_bytes, num_tokens_, info_.max_blocks(), params.wide_items != 0),
      stream));
  ++collectives_;
  records_->sequence[kCombineRecord] = sequence_base_ + collectives_;
  records_->epoch[kCombineRecord] = epoch_;
  return OkStatus();
}

Status FrontendOps::TakeErrors() {
  static constexpr const char* kOps[kRecordSlots] = {"update", "dispatch", "combine"};
  std::atomic_thread_fence(std::memory_order_acquire);
  failed_epoch_ = 0;
  Status first;
  for (int slot = 0; slot < kRecordSlots; ++slot) {
    kernels::DeviceError record = records_->host[slot];
    if (record.code == kernels::kDeviceErrorNone) continue;
    std::memset(&records_->host[slot], 0, sizeof(record));
    if (record.code == kernels::kDeviceErrorPeerTimeout) failed_epoch_ = records_->epoch[slot];
    if (first.ok()) {
      first = kernels::DeviceErrorToStatus(
          record, kernels::DescribeGroupOp(kOps[slot], group_, info_.group_rank(),
                                           records_->sequence[slot]));
    }
  }
  std::atomic_thread_fence(std::memory_order_release);
  return first;
}

}  // namespace epd
