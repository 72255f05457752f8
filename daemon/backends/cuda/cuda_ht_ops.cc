// The high-throughput dispatch launch of the cuda backend (kernels/ht_dispatch.cuh): the
// routing plan bound by UpdateHandle, this rank's exported metadata, the row payload (token
// rows, or fp8 quantized here or pre-quantized: dispatch_payload.h), at most sm_budget blocks.
// Combine of these groups is the shared combine kernel (cuda_ops.cc) on the packed rows.

#include "daemon/backends/cuda/cuda_backend_impl.h"
#include "common/cuda_check.h"
#include "daemon/backends/cuda/dispatch_payload.h"
#include "kernels/ht_dispatch.cuh"

namespace epd::cuda {

Status CudaBackend::DispatchHighThroughput(CudaHandle& me, uint64_t seq,
                                           const DispatchArgs& args) {
  CudaGroup& group = *me.group_;
  const GroupConfig& c = group.config_;
  const int n = me.num_tokens();
  kernels::HtDispatchParams params;
  if (Status bad = SetDispatchPayload(c, args, n, &params); !bad.ok()) {
    AbandonOp(me, seq, CollectiveKind::kDispatch, bad);
    return bad;
  }
  OpLane& lane = *me.lane_;
  EPD_CUDA_CHECK(cudaSetDevice(lane.device()));
  const HandlePrivateLayout& p = me.private_layout_;
  const HandleLayout& l = me.layout_;
  SetDispatchRouting(me, &params);
  params.row_bytes = static_cast<int64_t>(c.recv_row_bytes());  // fp8: H bytes
  params.recv_capacity = c.recv_row_capacity();
  params.dest_row = me.priv<int32_t>(p.dest_row);
  params.dest_counts = me.priv<int32_t>(p.dest_counts);
  params.recv_rank_counts = me.recv<int32_t>(l.recv_rank_counts_offset, l.recv_rank_counts_bytes);
  params.recv_rank_offsets =
      me.recv<int32_t>(l.recv_rank_offsets_offset, l.recv_rank_offsets_bytes);
  params.recv_counts = me.recv<int32_t>(l.recv_counts_offset, l.recv_counts_bytes);
  params.recv_offsets = me.recv<int32_t>(l.recv_offsets_offset, l.recv_offsets_bytes);
  EPD_ASSIGN_OR_RETURN(static_cast<kernels::CollectiveLaunch&>(params),
                       CollectiveLaunchOf(me, seq, CollectiveKind::kDispatch, args.signal));
  EPD_CUDA_CHECK(kernels::LaunchHtDispatch(params, group.max_blocks_, lane.stream()));
  return OkStatus();
}

}  // namespace epd::cuda
