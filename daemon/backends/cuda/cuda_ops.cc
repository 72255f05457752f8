// The op launches of the cuda backend: fence waits and signals, routing binds, dispatch and
// combine. Each only enqueues work on the handle's lane (op_lane.h) and claims a device error
// record there.
#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "common/fence_page.h"
#include "daemon/backends/cuda/cuda_backend_impl.h"
#include "daemon/backends/cuda/dispatch_payload.h"
#include "common/cuda_check.h"
#include "common/cuda_driver.h"
#include "daemon/core/log.h"
#include "kernels/abandon.cuh"
#include "kernels/combine.cuh"
#include "kernels/dispatch.cuh"
#include "kernels/fence_wait.cuh"
#include "kernels/launch_grid.h"
#include "kernels/routing.cuh"

namespace epd::cuda {
namespace {

bool IsShape(const TensorView& t, int64_t rows, int64_t cols) {
  return t.shape.size() == 2 && t.shape[0] == rows && t.shape[1] == cols;
}

}  // namespace

Status CheckTokenRows(const TensorView& t, const GroupConfig& c, int n, std::string_view op,
                      std::string_view field) {
  if (t.dtype != c.dtype || t.shape.size() != 2 || t.shape[0] < n || t.shape[1] != c.hidden ||
      (n > 0 && t.data == nullptr)) {
    return InvalidArgumentError("{} of group '{}': {} must be {} [>= {}, {}]", op, c.name, field,
                                DTypeName(c.dtype), n, c.hidden);
  }
  return OkStatus();
}

Status CheckCombineArgs(const GroupConfig& c, const CombineArgs& args, int n) {
  EPD_RETURN_IF_ERROR(CheckTokenRows(args.out, c, n, "combine", "out"));
  if (args.expert_out == nullptr && c.fp8_dispatch()) {
    return InvalidArgumentError(
        "combine of group '{}': no expert_out given; with fp8 dispatch recv_x is e4m3", c.name);
  }
  return OkStatus();
}

Status CudaBackend::WaitFence(BackendHandle& h, ExportedMemory& fence, uint64_t value) {
  const auto gate = Launching();
  auto& handle = static_cast<CudaHandle&>(h);
  const int node_rank = handle.node_rank_;
  EPD_ASSIGN_OR_RETURN(CudaExportedMemory * page, FenceOf(node_rank, fence));
  OpLane& lane = *handle.lane_;
  EPD_CUDA_CHECK(cudaSetDevice(lane.device()));
  const auto* counter =
      reinterpret_cast<const uint64_t*>(static_cast<char*>(page->data()) + kFenceCounterOffset);
  kernels::DeviceError* record =
      lane.ClaimRecord(PendingOp{0, "fence wait", nullptr, node_rank, value, nullptr});
  EPD_CUDA_CHECK(kernels::LaunchFenceWait(counter, value, timeout_ns(),
                                          static_cast<const uint64_t*>(shutdown_word_->data()),
                                          /*abort_at=*/1, record, lane.stream()));
  return OkStatus();
}

// NOTE: no launch gate: a stream write never waits, and the span ops call it under theirs.
Status CudaBackend::SignalFence(BackendHandle& h, ExportedMemory& fence, uint64_t value) {
  auto& handle = static_cast<CudaHandle&>(h);
  EPD_ASSIGN_OR_RETURN(CudaExportedMemory * page, FenceOf(handle.node_rank_, fence));
  OpLane& lane = *handle.lane_;
  EPD_CUDA_CHECK(cudaSetDevice(lane.device()));
  const auto counter =
      reinterpret_cast<CUdeviceptr>(static_cast<char*>(page->data()) + kFenceCounterOffset);
  // Default flags: the write is ordered after, and flushes, all prior work on the stream.
  EPD_ASSIGN_OR_RETURN(const DriverApi* driver, Driver());
  EPD_CU_CHECK(driver->stream_write_value64(lane.stream(), counter, value,
                                            CU_STREAM_WRITE_VALUE_DEFAULT));
  return OkStatus();
}

StatusOr<kernels::DeviceFenceSignal> CudaBackend::DeviceSignal(int node_rank,
                                                              const FenceSignal& signal) const {
  if (signal.fence == nullptr) return kernels::DeviceFenceSignal{};
  EPD_ASSIGN_OR_RETURN(CudaExportedMemory * page, FenceOf(node_rank, *signal.fence));
  return kernels::DeviceFenceSignal{
      reinterpret_cast<uint64_t*>(static_cast<char*>(page->data()) + kFenceCounterOffset),
      signal.value};
}

Status CudaBackend::UpdateHandle(BackendHandle& h, const UpdateArgs& args) {
  const auto gate = Launching();
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
  OpLane& lane = *handle.lane_;
  EPD_CUDA_CHECK(cudaSetDevice(lane.device()));
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
  params.high_throughput = c.high_throughput();
  params.world_size = c.world_size();
  params.overlap_launch = 1;
  if (c.high_throughput()) {
    params.dest_row = handle.priv<int32_t>(p.dest_row);
    params.dest_counts = handle.priv<int32_t>(p.dest_counts);
  }
  if (p.route_scratch_bytes > 0) {
    params.scratch = handle.priv<int32_t>(p.route_scratch);
    params.scratch_bytes = p.route_scratch_bytes;
  }
  EPD_ASSIGN_OR_RETURN(params.signal, DeviceSignal(handle.node_rank_, args.signal));
  params.error = lane.ClaimRecord(PendingOp{0, "update", handle.group_->name_,
                                                          handle.group_rank_, 0, nullptr});
  EPD_CUDA_CHECK(kernels::LaunchBindRouting(params, lane.stream()));
  handle.num_tokens_.store(n, std::memory_order_relaxed);
  return OkStatus();
}

StatusOr<kernels::CollectiveLaunch> CudaBackend::CollectiveLaunchOf(CudaHandle& handle,
                                                                    uint64_t seq,
                                                                    CollectiveKind kind,
                                                                    const FenceSignal& signal) {
  CudaGroup& group = *handle.group_;
  kernels::CollectiveLaunch launch;
  StatusOr<kernels::DeviceFenceSignal> device = DeviceSignal(handle.node_rank_, signal);
  if (!device.ok()) {
    AbandonOp(handle, seq, kind, device.status());
    return device.status();
  }
  launch.signal = *device;
  launch.world_size = group.config_.world_size();
  launch.rank = handle.group_rank_;
  launch.sync = group.sync_areas_;
  launch.peers = group.peer_table(handle.group_rank_);
  launch.handle_slot = handle.slot_;
  launch.abort = group.abort_word();
  launch.seq = seq;
  launch.timeout_ns = timeout_ns();
  const char* op = kind == CollectiveKind::kDispatch ? "dispatch" : "combine";
  launch.error = handle.lane_->ClaimRecord(
      PendingOp{0, op, group.name_, handle.group_rank_, seq, group.aborts_});
  return launch;
}

void CudaBackend::AbandonOp(CudaHandle& handle, uint64_t seq, CollectiveKind kind,
                            const Status& reason) {
  CudaGroup& group = *handle.group_;
  if (group.span_ != nullptr) return SpanAbandon(handle, seq, kind, reason);
  group.aborts_->NoteAbandon(handle.group_rank_, seq, reason);
  OpLane& lane = *handle.lane_;
  cudaError_t e = cudaSetDevice(lane.device());
  if (e == cudaSuccess) {
    e = kernels::LaunchAbandon(group.sync_areas_, group.config_.world_size(),
                               handle.group_rank_, seq, lane.stream());
  }
  if (e != cudaSuccess) {
    // The peers time out on the op instead of failing at once; nothing else is lost.
    EPD_LOG(kCuda, error, "group '{}' rank {}: could not mark {} op {} abandoned: {}",
            group.config_.name, handle.group_rank_, CollectiveKindName(kind), seq,
            cudaGetErrorString(e));
  }
}

void CudaBackend::Abandon(BackendHandle& h, CollectiveKind kind, const Status& reason) {
  const auto gate = Launching();
  auto& handle = static_cast<CudaHandle&>(h);
  AbandonOp(handle, handle.group_->NextSeq(handle.group_rank_), kind, reason);
}

Status CudaBackend::Dispatch(BackendHandle& h, const DispatchArgs& args) {
  const auto gate = Launching();
  auto& me = static_cast<CudaHandle&>(h);
  CudaGroup& group = *me.group_;
  const GroupConfig& c = group.config_;
  const int group_rank = me.group_rank_;
  // The op takes its number even when its arguments are rejected: the peers learn at once.
  const uint64_t seq = group.NextSeq(group_rank);
  if (group.span_ != nullptr) return SpanDispatch(me, seq, args);
  if (c.high_throughput()) return DispatchHighThroughput(me, seq, args);
  const int n = me.num_tokens();
  kernels::DispatchParams params;
  if (Status bad = SetDispatchPayload(c, args, n, &params); !bad.ok()) {
    AbandonOp(me, seq, CollectiveKind::kDispatch, bad);
    return bad;
  }
  OpLane& lane = *me.lane_;
  EPD_CUDA_CHECK(cudaSetDevice(lane.device()));
  SetDispatchRouting(me, &params);
  params.capacity = c.capacity();
  params.rank_major = c.layout == Layout::kRankMajor;
  params.recv_counts =
      me.recv<int32_t>(me.layout_.recv_counts_offset, me.layout_.recv_counts_bytes);
  params.recv_offsets =
      me.recv<int32_t>(me.layout_.recv_offsets_offset, me.layout_.recv_offsets_bytes);
  EPD_ASSIGN_OR_RETURN(static_cast<kernels::CollectiveLaunch&>(params),
                       CollectiveLaunchOf(me, seq, CollectiveKind::kDispatch, args.signal));
  EPD_CUDA_CHECK(kernels::LaunchDispatch(
      params, kernels::DispatchBlocks(params, n, group.max_blocks_), lane.stream()));
  return OkStatus();
}

Status CudaBackend::Combine(BackendHandle& h, const CombineArgs& args) {
  const auto gate = Launching();
  auto& me = static_cast<CudaHandle&>(h);
  CudaGroup& group = *me.group_;
  const GroupConfig& c = group.config_;
  const int group_rank = me.group_rank_;
  const uint64_t seq = group.NextSeq(group_rank);  // see Dispatch
  if (group.span_ != nullptr) return SpanCombine(me, seq, args);
  const TensorView& out = args.out;
  const int n = me.num_tokens();
  if (Status bad = CheckCombineArgs(c, args, n); !bad.ok()) {
    AbandonOp(me, seq, CollectiveKind::kCombine, bad);
    return bad;
  }
  OpLane& lane = *me.lane_;
  EPD_CUDA_CHECK(cudaSetDevice(lane.device()));
  const HandlePrivateLayout& p = me.private_layout_;
  kernels::CombineParams params;
  params.top_k = c.top_k;
  params.local_experts = c.local_experts();
  params.hidden = c.hidden;
  params.token_type = kernels::TokenTypeOf(c.dtype);
  // High-throughput rows are pre-reduced per destination rank like rank-major ones.
  params.rank_major = c.layout == Layout::kRankMajor || c.high_throughput();
  params.experts = InboxExperts(c);
  params.recv_rows = static_cast<int64_t>(me.layout_.recv_rows);
  params.topk_idx = me.priv<int32_t>(p.topk_idx);
  params.topk_weights = me.priv<float>(p.topk_weights);
  params.slot = me.priv<int32_t>(p.slot);
  params.bound_tokens = me.priv<int32_t>(p.bound_tokens);
  params.out = out.data;
  // Peers learn this address through the SyncArea when the op opens.
  params.expert_out = args.expert_out != nullptr
                          ? args.expert_out
                          : me.recv<char>(me.layout_.recv_x_offset, me.layout_.recv_x_bytes);
  EPD_ASSIGN_OR_RETURN(static_cast<kernels::CollectiveLaunch&>(params),
                       CollectiveLaunchOf(me, seq, CollectiveKind::kCombine, args.signal));
  const int64_t row_bytes = static_cast<int64_t>(c.hidden) * DTypeSize(c.dtype);
  params.wide_items = c.high_throughput() ? 1 : 0;
  EPD_CUDA_CHECK(kernels::LaunchCombine(
      params, kernels::CombineBlocks(row_bytes, n, group.max_blocks_, params.wide_items != 0),
      lane.stream()));
  return OkStatus();
}

}  // namespace epd::cuda
