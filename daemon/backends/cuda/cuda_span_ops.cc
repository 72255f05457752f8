// Groups that span daemons on the cuda backend (docs/design.md §9, "cuda transport"): creation
// and the dispatch / combine of one hosted rank (both algorithms, token-dtype or fp8 dispatch),
// as kernels around NCCL exchanges (kernels/span_exchange.cuh, span_comm.h), all on the rank's
// lane stream: low-latency dispatches exchange whole messages, high-throughput ones their
// headers first and then, once the host read them, only the rows routed; combines return only
// what the dispatch brought, sized by the host from its headers (rank-major low-latency: whole
// messages) (kernels/span_messages.h). Results equal a single daemon's with the same R, byte
// for byte.
#include <cuda_runtime.h>

#include <chrono>

#include "common/cuda_check.h"
#include "daemon/backends/cuda/cuda_backend_impl.h"
#include "daemon/backends/cuda/dispatch_payload.h"
#include "daemon/backends/cuda/span_support.h"
#include "daemon/core/log.h"
#include "kernels/launch_grid.h"
#include "kernels/span_exchange.cuh"

namespace epd::cuda {
namespace {

// Where a spanning handle's exchange buffers start inside span_buffers_ (span_messages.h).
struct SpanBuffers {
  char* dispatch_send = nullptr;
  char* dispatch_recv = nullptr;
  char* return_send = nullptr;
  char* return_recv = nullptr;
  int32_t* plan = nullptr;
};

SpanBuffers BuffersOf(const CudaHandle& h, const kernels::SpanShape& s) {
  SpanBuffers b;
  const int64_t R = s.world_size;
  char* base = h.span_buffers_->data();
  b.dispatch_send = base;
  b.dispatch_recv = base + R * s.dispatch.bytes;
  b.return_send = base + 2 * R * s.dispatch.bytes;
  b.return_recv = b.return_send + R * s.ret.bytes;
  b.plan = reinterpret_cast<int32_t*>(b.return_recv + R * s.ret.bytes);
  return b;
}

}  // namespace

bool CudaBackend::PrepareInBackground(BackendHandle& h, CollectiveKind kind,
                                      std::function<void(Status)> done) {
  auto& me = static_cast<CudaHandle&>(h);
  if (me.group_->span_ == nullptr) return false;
  if (!me.group_->span_->formed()) return me.group_->span_->FormInBackground(std::move(done));
  // Expert-major low-latency: a combine sizes its return messages by its dispatch's counts
  // (ReadSpanRows). Until they are on the host its lane waits, not the rank worker; they
  // are once the lane did what it holds (the dispatch: the event follows its plan kernel).
  if (kind != CollectiveKind::kCombine || !me.span_rows_unread_.has_value()) return false;
  const cudaError_t counted = cudaEventQuery(me.span_counted_->get());
  cudaGetLastError();  // not ready is no error; a failed query: ReadSpanRows reports it
  if (counted != cudaErrorNotReady) return false;
  me.lane_->Complete([done = std::move(done)](const Status&) { done(OkStatus()); });
  return true;
}

Status CudaBackend::PrepareCollective(BackendHandle& h) {
  auto& me = static_cast<CudaHandle&>(h);
  if (me.group_->span_ == nullptr) return OkStatus();
  return me.group_->span_->EnsureFormed();
}

namespace {

struct SpanOp {
  kernels::SpanShape shape;
  SpanBuffers buffers;
};
// Forms the communicator first (an op that cannot reach its peers enqueues nothing) and makes
// the rank's GPU current.
StatusOr<SpanOp> BeginSpanOp(CudaHandle& me) {
  EPD_RETURN_IF_ERROR(me.group_->span_->EnsureFormed());
  EPD_CUDA_CHECK(cudaSetDevice(me.lane_->device()));
  SpanOp op;
  op.shape = SpanShapeOf(me.group_->config_, me.group_rank_);
  op.buffers = BuffersOf(me, op.shape);
  return op;
}

// Where this handle's node rank's R dispatch headers land on the host (SpanReadsHeaders).
int32_t* HeadersOf(const CudaHandle& me, const kernels::SpanShape& shape) {
  const int64_t words = kernels::SpanHeaderWords(shape.experts, shape.world_size);
  return static_cast<int32_t*>(me.group_->span_headers_->data()) +
         me.node_rank_ * shape.world_size * words;
}

// After the headers' exchange (SpanReadsHeaders), their copy to the host and the event the
// host waits on (the high-throughput deferred part, ReadSpanRows).
Status CopyHeadersToHost(CudaHandle& me, const kernels::SpanShape& shape,
                         const SpanBuffers& buffers) {
  const size_t width =
      static_cast<size_t>(kernels::SpanHeaderWords(shape.experts, shape.world_size)) * 4;
  cudaStream_t stream = me.lane_->stream();
  EPD_CUDA_CHECK(cudaMemcpy2DAsync(
      HeadersOf(me, shape), width, buffers.dispatch_recv, static_cast<size_t>(shape.dispatch.bytes),
      width, static_cast<size_t>(shape.world_size), cudaMemcpyDeviceToHost, stream));
  EPD_CUDA_CHECK(cudaEventRecord(me.span_counted_->get(), stream));
  return OkStatus();
}

// Enqueues the source half of a dispatch (the pack kernel over this rank's bound routing and
// `payload`'s rows; headers only when `abandoned`) and its exchange: the whole messages
// (low-latency), or their headers (high-throughput; the rest is the deferred part's), then,
// where the host reads the headers and no plan kernel follows to hand them over
// (high-throughput; an abandoning rank), their copy to the host. Returns the communicator
// generation it went on.
StatusOr<int64_t> PackAndExchange(CudaHandle& me, const kernels::SpanShape& shape,
                                  const SpanBuffers& buffers,
                                  const kernels::DispatchInputs& payload, bool abandoned) {
  const HandlePrivateLayout& p = me.private_layout_;
  kernels::SpanPackParams pack;
  pack.shape = shape;
  pack.topk_idx = me.priv<int32_t>(p.topk_idx);
  pack.topk_weights = me.priv<float>(p.topk_weights);
  pack.local_rank = me.priv<int32_t>(p.local_rank);
  pack.expert_counts = me.priv<int32_t>(p.expert_counts);
  pack.bound_tokens = me.priv<int32_t>(p.bound_tokens);
  if (shape.high_throughput) {
    pack.dest_row = me.priv<int32_t>(p.dest_row);
    pack.dest_counts = me.priv<int32_t>(p.dest_counts);
  }
  pack.x = payload.x;
  pack.payload = payload.payload;
  pack.x_scales = payload.x_scales;
  pack.send = buffers.dispatch_send;
  pack.recv = buffers.dispatch_recv;
  pack.abandoned = abandoned ? 1 : 0;
  OpLane& lane = *me.lane_;
  EPD_CUDA_CHECK(kernels::LaunchSpanPack(pack, lane.stream()));
  ExchangeSizes sizes =
      UniformSizes(shape.world_size,
                   shape.high_throughput ? shape.dispatch.entries_offset : shape.dispatch.bytes);
  sizes.stride = shape.dispatch.bytes;
  EPD_ASSIGN_OR_RETURN(
      const int64_t generation,
      me.group_->span_->Exchange(
          me.group_rank_, lane.stream(), buffers.dispatch_send, buffers.dispatch_recv, sizes,
          shape.high_throughput ? (abandoned ? "dispatch counts (abandoned)" : "dispatch counts")
                                : (abandoned ? "dispatch (abandoned)" : "dispatch")));
  if (shape.high_throughput || (abandoned && SpanReadsHeaders(me.group_->config_))) {
    EPD_RETURN_IF_ERROR(CopyHeadersToHost(me, shape, buffers));
  }
  return generation;
}

// Enqueues the destination half of a combine (each source's expert-output rows; the header
// only when `abandoned`) and its exchange.
Status ReturnAndExchange(CudaHandle& me, const kernels::SpanShape& shape,
                         const SpanBuffers& buffers, const void* expert_out, bool abandoned) {
  kernels::SpanReturnParams ret;
  ret.shape = shape;
  ret.recv = buffers.dispatch_recv;
  ret.plan = buffers.plan;
  ret.expert_out = expert_out;
  ret.recv_rows = static_cast<int64_t>(me.layout_.recv_rows);
  ret.send = buffers.return_send;
  ret.recv_ret = buffers.return_recv;
  ret.abandoned = abandoned ? 1 : 0;
  OpLane& lane = *me.lane_;
  EPD_CUDA_CHECK(kernels::LaunchSpanReturn(ret, lane.stream()));
  ExchangeSizes sizes = UniformSizes(shape.world_size, shape.ret.bytes);
  if (!shape.rank_major) {  // what each source's dispatch brought goes back to it
    for (int p = 0; p < shape.world_size; ++p) {
      sizes.send[p] = kernels::SpanReturnBytes(shape.ret, me.span_rows_.in[p]);
      sizes.recv[p] = kernels::SpanReturnBytes(shape.ret, me.span_rows_.out[p]);
    }
  }
  return me.group_->span_
      ->Exchange(me.group_rank_, lane.stream(), buffers.return_send, buffers.return_recv, sizes,
                 abandoned ? "combine (abandoned)" : "combine")
      .status();
}

}  // namespace

StatusOr<std::unique_ptr<CudaGroup>> CudaBackend::CreateSpanningGroup(const GroupConfig& config) {
  EPD_RETURN_IF_ERROR(CheckSpanningSupported(config));
  std::shared_ptr<ClusterStore> cluster;
  {
    std::lock_guard lock(groups_mu_);
    cluster = cluster_;
  }
  if (cluster == nullptr) {
    return FailedPreconditionError(
        "group '{}' spans nodes, but this daemon is not part of a cluster ([cluster] settings)",
        config.name);
  }
  const int R = config.world_size();
  EPD_ASSIGN_OR_RETURN(std::unique_ptr<CudaGroup> group,
                       CudaGroup::Create(config, allocations_, reclaimer_));
  group->devices_.assign(R, -1);
  SpanComm::Options span;
  span.config = config;
  for (int r = 0; r < R; ++r) {
    const int node_rank = config.NodeRankOf(r);
    if (node_rank < 0) continue;
    group->devices_[r] = ranks_[node_rank]->device;
    span.hosted.push_back(r);
    span.devices.push_back(ranks_[node_rank]->device);
  }
  group->transport_ = std::make_shared<TransportRecord>(span.hosted);
  span.record = group->transport_;
  span.store = std::move(cluster);
  span.timeout = options_.op_timeout;
  CudaGroup* raw = group.get();
  span.on_failure = [raw](const Status& reason) {
    const uint64_t through = raw->RealignSequences();
    raw->aborts_->NoteAbort(through, reason);  // before the word: a released op reads it
    raw->RaiseAbortWord(through);
  };
  if (SpanReadsHeaders(config)) {
    const int64_t words = kernels::SpanHeaderWords(config.experts, R);
    EPD_ASSIGN_OR_RETURN(
        group->span_headers_,
        PinnedHostMemory::Create(static_cast<size_t>(ranks_.size() * R * words * 4), allocations_,
                                 &reclaimer_));
  }
  group->span_ = std::make_unique<SpanComm>(std::move(span));
  {
    std::lock_guard lock(groups_mu_);
    groups_.insert(group.get());
    if (shutting_down_) {
      group->RaiseAbortWord(std::numeric_limits<uint64_t>::max());
      group->span_->Stop(UnavailableError("epd is shutting down"));
    }
  }
  group->forget_ = [this](CudaGroup* g) { ForgetGroup(g); };
  EPD_LOG(kCuda, info,
          "created {} (NCCL between daemons; {}{} bytes per dispatch and {}{} per combine sent "
          "by each rank)",
          config.ToString(), config.high_throughput() ? "at most " : "",
          SpanDispatchBytesSent(config), SpanReadsHeaders(config) ? "at most " : "",
          SpanCombineBytesSent(config));
  return group;
}

StatusOr<std::unique_ptr<BackendHandle>> CudaBackend::CreateSpanningHandle(CudaGroup& group,
                                                                           int group_rank) {
  const GroupConfig& c = group.config_;
  const int node_rank = c.NodeRankOf(group_rank);
  if (node_rank < 0) {
    return InvalidArgumentError("group '{}': group rank {} lives on node {}, not on this one ({})",
                                c.name, group_rank, c.NodeOf(group_rank), c.span.node);
  }
  auto handle = std::make_unique<CudaHandle>();
  handle->group_ = &group;
  handle->group_rank_ = group_rank;
  handle->node_rank_ = node_rank;
  handle->layout_ = ComputeHandleLayout(c);
  handle->private_layout_ = ComputePrivateLayout(c);
  RankState& rank = *ranks_[node_rank];
  EPD_ASSIGN_OR_RETURN(handle->lane_, group.LaneOf(group_rank, [&]() -> StatusOr<OpLane*> {
    EPD_ASSIGN_OR_RETURN(
        std::unique_ptr<OpLane> lane,
        OpLane::Create(rank.device, fmt::format("group '{}' rank {}", c.name, node_rank),
                       ring_allocations_, reclaimer_, options_.on_fatal_error));
    return lanes_.Add(std::move(lane));
  }));
  EPD_ASSIGN_OR_RETURN(
      handle->exported_,
      CudaExportedMemory::Create(node_rank, rank.device, handle->layout_.exported_bytes,
                                 allocations_, reclaimer_, rank.setup_stream->get()));
  EPD_ASSIGN_OR_RETURN(handle->private_, CudaExportedMemory::Create(
                                             node_rank, rank.device, handle->private_layout_.bytes,
                                             allocations_, reclaimer_, rank.setup_stream->get()));
  EPD_ASSIGN_OR_RETURN(handle->span_buffers_,
                       DeviceMemory::Create(rank.device, static_cast<size_t>(SpanHandleBytesOf(c)),
                                            allocations_, reclaimer_, rank.setup_stream->get()));
  if (SpanReadsHeaders(c)) {
    EPD_ASSIGN_OR_RETURN(handle->span_counted_, CudaEvent::Create(rank.device));
    const int R = c.world_size();
    handle->span_rows_ = SpanRows{std::vector<int64_t>(R, 0), std::vector<int64_t>(R, 0)};
  }
  return std::unique_ptr<BackendHandle>(std::move(handle));
}

Status CudaBackend::SpanDispatch(CudaHandle& me, uint64_t seq, const DispatchArgs& args) {
  CudaGroup& group = *me.group_;
  const GroupConfig& c = group.config_;
  const int n = me.num_tokens();
  kernels::DispatchInputs payload;  // the single-daemon kernels' checks and row payload
  if (Status bad = SetDispatchPayload(c, args, n, &payload); !bad.ok()) {
    SpanAbandon(me, seq, CollectiveKind::kDispatch, bad);
    return bad;
  }
  EPD_ASSIGN_OR_RETURN(const SpanOp op, BeginSpanOp(me));
  EPD_ASSIGN_OR_RETURN(const int64_t generation,
                       PackAndExchange(me, op.shape, op.buffers, payload, /*abandoned=*/false));
  if (op.shape.high_throughput) {
    me.span_pending_ = CudaHandle::SpanPending{seq, generation, /*abandoned=*/false, args.signal};
    return OkStatus();
  }
  EPD_RETURN_IF_ERROR(SpanAssembleAndSignal(me, seq, args.signal));
  // Expert-major: the combine reads the headers for its return sizes (ReadSpanRows).
  if (SpanReadsHeaders(c)) me.span_rows_unread_ = generation;
  return OkStatus();
}

// Expert-major low-latency: the rows of the combine's return messages, from the last
// dispatch's headers once they are on the host (bounded like the high-throughput deferred
// part; a failure fails the dispatch's communicator generation so no peer waits on this rank).
Status CudaBackend::ReadSpanRows(CudaHandle& me) {
  if (!me.span_rows_unread_.has_value()) return OkStatus();
  const int64_t generation = *me.span_rows_unread_;
  me.span_rows_unread_.reset();
  const Status status = AwaitSpanRows(me, generation, "combine: waiting for its dispatch's counts");
  if (!status.ok()) me.group_->span_->FailGeneration(generation, status);
  return status;
}

// The stream may first pass the dispatch's fence wait and its exchange, each bounded by
// op_timeout: hence twice that.
Status CudaBackend::AwaitSpanRows(CudaHandle& me, int64_t generation, std::string_view what) {
  SpanComm& span = *me.group_->span_;
  const GroupConfig& c = me.group_->config_;
  const kernels::SpanShape shape = SpanShapeOf(c, me.group_rank_);
  const int R = shape.world_size;
  me.span_rows_ = SpanRows{std::vector<int64_t>(R, 0), std::vector<int64_t>(R, 0)};
  EPD_RETURN_IF_ERROR(AwaitEvent(
      me.span_counted_->get(), std::chrono::steady_clock::now() + 2 * options_.op_timeout,
      [&]() -> Status {
        if (span.generation() == generation) return OkStatus();
        return UnavailableError("the group's NCCL communicator was aborted");
      },
      fmt::format("group '{}' rank {}: {}", c.name, me.group_rank_, what)));
  me.span_rows_ = SpanRowsOf(shape, HeadersOf(me, shape));
  return OkStatus();
}

Status CudaBackend::SpanAssembleAndSignal(CudaHandle& me, uint64_t seq, const FenceSignal& signal) {
  CudaGroup& group = *me.group_;
  const GroupConfig& c = group.config_;
  const kernels::SpanShape shape = SpanShapeOf(c, me.group_rank_);
  const SpanBuffers buffers = BuffersOf(me, shape);
  OpLane& lane = *me.lane_;
  const HandleLayout& l = me.layout_;
  kernels::SpanAssembleParams assemble;
  assemble.shape = shape;
  assemble.capacity = c.high_throughput() ? c.recv_row_capacity() : c.capacity();
  assemble.recv = buffers.dispatch_recv;
  assemble.plan = buffers.plan;
  assemble.recv_x = me.recv<char>(l.recv_x_offset, l.recv_x_bytes);
  assemble.recv_src = me.recv<int32_t>(l.recv_src_offset, l.recv_src_bytes);
  assemble.recv_weights = me.recv<float>(l.recv_weights_offset, l.recv_weights_bytes);
  assemble.recv_topk_idx = me.recv<int32_t>(l.recv_topk_idx_offset, l.recv_topk_idx_bytes);
  assemble.recv_topk_weights =
      me.recv<float>(l.recv_topk_weights_offset, l.recv_topk_weights_bytes);
  assemble.recv_counts = me.recv<int32_t>(l.recv_counts_offset, l.recv_counts_bytes);
  assemble.recv_offsets = me.recv<int32_t>(l.recv_offsets_offset, l.recv_offsets_bytes);
  assemble.recv_rank_counts = me.recv<int32_t>(l.recv_rank_counts_offset, l.recv_rank_counts_bytes);
  assemble.recv_rank_offsets =
      me.recv<int32_t>(l.recv_rank_offsets_offset, l.recv_rank_offsets_bytes);
  assemble.expert_rows = me.recv<int32_t>(l.expert_rows_offset, l.expert_rows_bytes);
  assemble.expert_rows_entries = static_cast<int64_t>(l.expert_rows_entries);
  assemble.recv_scales = me.recv<char>(l.recv_scales_offset, l.recv_scales_bytes);
  // Expert-major low-latency: the plan kernel hands the headers to the host (no copy op in
  // the op's path); high-throughput copied them before its second exchange.
  const bool hands_headers = SpanReadsHeaders(c) && !shape.high_throughput;
  if (hands_headers) assemble.host_headers = HeadersOf(me, shape);
  assemble.abort = group.abort_word();
  assemble.seq = seq;
  assemble.error =
      lane.ClaimRecord(PendingOp{0, "dispatch", group.name_, me.group_rank_, seq, group.aborts_});
  EPD_CUDA_CHECK(kernels::LaunchSpanAssemble(assemble, lane.stream()));
  if (hands_headers) EPD_CUDA_CHECK(cudaEventRecord(me.span_counted_->get(), lane.stream()));
  return SignalAfterSpanOp(me, signal);
}

bool CudaBackend::HasDeferred(BackendHandle& h) {
  return static_cast<CudaHandle&>(h).span_pending_.has_value();
}

Status CudaBackend::EnqueueDeferred(BackendHandle& h) {
  const auto gate = Launching();
  auto& me = static_cast<CudaHandle&>(h);
  if (!me.span_pending_.has_value()) return OkStatus();
  const CudaHandle::SpanPending pending = *me.span_pending_;
  me.span_pending_.reset();
  return SpanDispatchRest(me, pending);
}

// Waits (bounded) for the headers on the host, then enqueues the payload exchange sized by them
// and the destination half. Any failure fails the communicator's generation (the group's abort
// word is raised for every op issued so far, so the peers and this rank's kernels stop), and
// the destination half is still enqueued: its kernels record the failure and the op's signal
// follows, so the frontend's wait on it ends.
Status CudaBackend::SpanDispatchRest(CudaHandle& me, const CudaHandle::SpanPending& pending) {
  CudaGroup& group = *me.group_;
  SpanComm& span = *group.span_;
  const GroupConfig& c = group.config_;
  EPD_CUDA_CHECK(cudaSetDevice(me.lane_->device()));
  const kernels::SpanShape shape = SpanShapeOf(c, me.group_rank_);
  const SpanBuffers buffers = BuffersOf(me, shape);
  const int R = shape.world_size;
  Status status = AwaitSpanRows(me, pending.generation,
                                fmt::format("dispatch {}: waiting for the counts", pending.seq));
  if (status.ok()) {
    ExchangeSizes sizes;
    sizes.stride = shape.dispatch.bytes;
    sizes.offset = shape.dispatch.entries_offset;
    sizes.send.resize(R);
    sizes.recv.resize(R);
    for (int p = 0; p < R; ++p) {
      sizes.send[p] = kernels::SpanDispatchBodyBytes(shape.dispatch, me.span_rows_.out[p]);
      sizes.recv[p] = kernels::SpanDispatchBodyBytes(shape.dispatch, me.span_rows_.in[p]);
    }
    status = span.Exchange(me.group_rank_, me.lane_->stream(), buffers.dispatch_send,
                           buffers.dispatch_recv, sizes,
                           pending.abandoned ? "dispatch rows (abandoned)" : "dispatch rows",
                           pending.generation)
                 .status();
  }
  if (!status.ok()) span.FailGeneration(pending.generation, status);
  if (pending.abandoned) return status;
  EPD_RETURN_IF_ERROR(SpanAssembleAndSignal(me, pending.seq, pending.signal));
  return status;
}

Status CudaBackend::SpanCombine(CudaHandle& me, uint64_t seq, const CombineArgs& args) {
  CudaGroup& group = *me.group_;
  const GroupConfig& c = group.config_;
  const int n = me.num_tokens();
  if (Status bad = CheckCombineArgs(c, args, n); !bad.ok()) {
    SpanAbandon(me, seq, CollectiveKind::kCombine, bad);
    return bad;
  }
  EPD_ASSIGN_OR_RETURN(const SpanOp op, BeginSpanOp(me));
  const kernels::SpanShape& shape = op.shape;
  const SpanBuffers& buffers = op.buffers;
  OpLane& lane = *me.lane_;
  const HandleLayout& l = me.layout_;
  const void* expert_out =
      args.expert_out != nullptr ? args.expert_out : me.recv<char>(l.recv_x_offset, l.recv_x_bytes);
  EPD_RETURN_IF_ERROR(ReadSpanRows(me));
  EPD_RETURN_IF_ERROR(ReturnAndExchange(me, shape, buffers, expert_out, /*abandoned=*/false));
  const HandlePrivateLayout& p = me.private_layout_;
  kernels::SpanReduceParams reduce;
  reduce.shape = shape;
  reduce.token_type = kernels::TokenTypeOf(c.dtype);
  reduce.recv_ret = buffers.return_recv;
  reduce.topk_idx = me.priv<int32_t>(p.topk_idx);
  reduce.topk_weights = me.priv<float>(p.topk_weights);
  reduce.bound_tokens = me.priv<int32_t>(p.bound_tokens);
  if (shape.high_throughput) reduce.dest_row = me.priv<int32_t>(p.dest_row);
  reduce.local_rank = me.priv<int32_t>(p.local_rank);
  reduce.expert_counts = me.priv<int32_t>(p.expert_counts);
  reduce.out = args.out.data;
  reduce.abort = group.abort_word();
  reduce.seq = seq;
  reduce.error =
      lane.ClaimRecord(PendingOp{0, "combine", group.name_, me.group_rank_, seq, group.aborts_});
  EPD_CUDA_CHECK(kernels::LaunchSpanReduce(reduce, lane.stream()));
  return SignalAfterSpanOp(me, args.signal);
}

// The spanning kernels do not fold fence signals (FoldsFenceSignals is the backend's): a
// stream write after the op's last kernel.
Status CudaBackend::SignalAfterSpanOp(CudaHandle& me, const FenceSignal& signal) {
  if (signal.fence == nullptr) return OkStatus();
  return SignalFence(me, *signal.fence, signal.value);
}

void CudaBackend::SpanAbandon(CudaHandle& me, uint64_t seq, CollectiveKind kind,
                              const Status& reason) {
  CudaGroup& group = *me.group_;
  const GroupConfig& c = group.config_;
  group.aborts_->NoteAbandon(me.group_rank_, seq, reason);
  // Without a communicator (the op's formation failed, and with it the generation on every
  // member) there is no peer to tell; forming one here would hold the rank worker.
  if (!group.span_->formed()) return;
  // The rank still takes part in the exchange, its messages marked abandoned, so the peers'
  // op fails at once with its reason instead of waiting for the watchdog.
  auto run = [&]() -> Status {
    EPD_ASSIGN_OR_RETURN(const SpanOp op, BeginSpanOp(me));
    if (kind == CollectiveKind::kCombine) {
      EPD_RETURN_IF_ERROR(ReadSpanRows(me));
      return ReturnAndExchange(me, op.shape, op.buffers, nullptr, /*abandoned=*/true);
    }
    EPD_ASSIGN_OR_RETURN(const int64_t generation,
                         PackAndExchange(me, op.shape, op.buffers, kernels::DispatchInputs{},
                                         /*abandoned=*/true));
    // The peers' rows to this rank still come (they size them by their own headers), and the
    // combine after it returns what their headers say.
    if (op.shape.high_throughput) {
      me.span_pending_ = CudaHandle::SpanPending{seq, generation, /*abandoned=*/true, {}};
    } else if (SpanReadsHeaders(c)) {
      me.span_rows_unread_ = generation;
    }
    return OkStatus();
  };
  if (Status sent = run(); !sent.ok()) {
    // The peers then fail the op when the exchange times out instead of at once.
    EPD_LOG(kCuda, warn, "group '{}' rank {}: could not mark {} op {} abandoned: {}", c.name,
            me.group_rank_, CollectiveKindName(kind), seq, sent.ToString());
  }
}

}  // namespace epd::cuda
