// The cuda backend's side of the frontend-launched data path (daemon/core/data_plane.h):
// exporting a handle's private region (with a high-throughput group's packed-row plan) and
// sync area, and resetting a group's device sync
// state after a frontend-launched rank's frontend ended.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>

#include "common/cuda_check.h"
#include "common/group_state_page.h"
#include "daemon/backends/cuda/cuda_backend_impl.h"
#include "kernels/sync_area.cuh"

namespace epd::cuda {

StatusOr<DataPlaneExport> CudaBackend::ExportDataPlane(BackendGroup& g, BackendHandle& h) {
  auto& group = static_cast<CudaGroup&>(g);
  auto* handle = dynamic_cast<CudaHandle*>(&h);
  if (handle == nullptr || handle->group_ != &group) {
    return InvalidArgumentError("group '{}': not one of its handles", group.config_.name);
  }
  if (group.span_ != nullptr) {
    return FailedPreconditionError(
        "group '{}' spans nodes: its ops run on the daemon's streams (NCCL between daemons); it "
        "has no frontend-launched path",
        group.config_.name);
  }
  const HandlePrivateLayout& p = handle->private_layout_;
  DataPlaneExport out;
  out.private_region = handle->private_->Describe();
  out.private_offsets = HandlePrivateOffsets{
      p.topk_idx, p.topk_weights,  p.expert_counts,       p.slot,     p.local_rank, p.bound_tokens,
      p.bytes,    p.route_scratch, p.route_scratch_bytes, p.dest_row, p.dest_counts};
  const CudaExportedMemory& sync = *group.sync_[handle->group_rank_];
  out.sync_area = sync.Describe();
  out.sync_area_bytes = sync.size();
  // High-throughput groups: the SM budget is folded into it (the one grid bound of both paths).
  out.max_blocks = group.max_blocks_;
  out.handle_slot = handle->slot_;
  return out;
}

StatusOr<uint64_t> CudaBackend::ResetDataPlane(BackendGroup& g, int dead_group_rank) {
  auto& group = static_cast<CudaGroup&>(g);
  const GroupConfig& c = group.config_;
  const int R = c.world_size();
  if (group.span_ != nullptr) {
    return FailedPreconditionError("group '{}' spans nodes and has no frontend-launched path",
                                   c.name);
  }
  if (dead_group_rank >= R) {
    return InvalidArgumentError("group '{}': group rank {} is outside [0, {})", c.name,
                                dead_group_rank, R);
  }
  // The highest op sequence number any rank published: frontends' ops are numbered on the
  // device (SyncControl::seq, above the epoch's base), so the daemon learns theirs from the
  // sync areas. The new base is the floor of every rank's next device-numbered op; a cleared
  // area's counter (0) is below it too.
  uint64_t highest = 0;
  for (int r = 0; r < R; ++r) {
    highest = std::max(highest, group.seq_[r].load());
    RankState& rank = *ranks_[c.ranks[r]];
    EPD_CUDA_CHECK(cudaSetDevice(rank.device));
    kernels::SyncArea area;
    EPD_CUDA_CHECK(cudaMemcpyAsync(&area, group.sync_[r]->data(), sizeof(area),
                                   cudaMemcpyDeviceToHost, rank.setup_stream->get()));
    EPD_CUDA_CHECK(cudaStreamSynchronize(rank.setup_stream->get()));
    highest = std::max({highest, kernels::GoSeq(area.control.go), area.control.seq});
    for (int s = 0; s < kernels::kMaxRanks; ++s) {
      highest = std::max({highest, area.done[s], area.start[s], area.end[s], area.abandoned[s]});
    }
  }
  const uint64_t base = highest + kGroupResetSequenceGap;
  if (dead_group_rank >= 0) {
    // The dead rank gave up every op of the old epoch, including ops survivors queued but
    // have not started (the gap is more than any frontend queues): their waits for its flags
    // end at once (PeerAbandoned) instead of at the timeout. The new epoch numbers its ops
    // above the mark, so it does not touch them.
    const uint64_t mark = base;
    const size_t at = offsetof(kernels::SyncArea, abandoned) + sizeof(uint64_t) * dead_group_rank;
    for (int r = 0; r < R; ++r) {
      RankState& rank = *ranks_[c.ranks[r]];
      EPD_CUDA_CHECK(cudaSetDevice(rank.device));
      char* area = static_cast<char*>(group.sync_[r]->data());
      if (r == dead_group_rank) {
        // NOTE: only the dead rank's area is cleared: its kernels died with its context,
        // while the survivors' in-flight kernels still use their own block tickets.
        EPD_CUDA_CHECK(
            cudaMemsetAsync(area, 0, group.sync_[r]->size(), rank.setup_stream->get()));
      } else {
        EPD_CUDA_CHECK(cudaMemcpyAsync(area + at, &mark, sizeof(mark), cudaMemcpyHostToDevice,
                                       rank.setup_stream->get()));
      }
      EPD_CUDA_CHECK(cudaStreamSynchronize(rank.setup_stream->get()));
    }
  }
  // NOTE: the daemon's own numbering continues above the frontends' too, for when the group
  // goes back to the daemon's ops.
  for (int r = 0; r < R; ++r) group.seq_[r].store(base);
  return base;
}

}  // namespace epd::cuda
