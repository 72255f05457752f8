// FrontendOps: the frontend-launched data path of one handle (client/epd/data_path.h).
//
// Launches epd's own routing-bind, dispatch and combine kernels (kernels/, the source the
// daemon runs) on the frontend's stream, in the frontend's CUDA context, against memory the
// daemon owns: this rank's private region and receive region, and every group rank's receive
// region and sync area, mapped once at Open. No RPC and no context switch per op.
// Both algorithms: low-latency groups, and high-throughput groups (packed rows bounded by
// recv_capacity, on at most the group's SM budget: DataPlaneInfo.max_blocks).
//
//   auto view = epd::HandleView::Open(session->CreateHandle("g").value()).value();
//   auto info = session->AttachDataPlane(view->handle_id()).value();  // every rank's handle exists
//   auto ops = epd::FrontendOps::Open(info, *view).value();
//   ops->Update(topk, /*idx_int64=*/false, weights, n, stream);
//   ops->Dispatch(x, stream);  /* experts on view->recv_x() */  ops->Combine(out, stream);
//   cudaStreamSynchronize(stream);  EPD_RETURN_IF_ERROR(ops->TakeErrors());
//
// Contract: every rank of the group launches the same collectives in the same order, as with
// the daemon's ops. Bad expert ids and capacity overflow are found on the device; TakeErrors
// turns the records into the daemon's messages once the stream passed the ops. A combine
// launched after a dispatch that failed (e.g. a high-throughput recv_capacity overflow) leaves
// `out` undefined: the daemon's streams refuse that combine, here only TakeErrors tells. When
// the daemon resets the group (a peer's frontend ended), the next Update/Dispatch/Combine fails
// once with UNAVAILABLE naming the new epoch, and the ops after it are numbered in that epoch.
// After a peer timeout, pass failed_epoch() to Session::AttachDataPlane so every rank restarts.
// Not thread-safe: one frontend thread drives one FrontendOps.
// CUDA graphs: update, dispatch and combine can be captured on the frontend's stream and the
// graph replayed with new input contents (same n, same pointers), on groups of any size.
// Collectives are numbered on the device (a counter per group rank in the daemon's sync area,
// advanced by each op's last block), so every replay gets fresh sequence numbers; the
// captured floor is the epoch's base. After the daemon resets the group (a new epoch), the
// next eager op fails once with UNAVAILABLE as above; graphs captured in the old epoch must be
// captured again (their floor is the old base, so their ops would not meet the new epoch's).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "client/epd/handle_view.h"
#include "client/epd/mapped_region.h"
#include "common/status.h"
#include "epd/v1/epd.pb.h"

namespace epd::kernels {
struct CollectiveLaunch;
struct DispatchInputs;
}  // namespace epd::kernels

namespace epd {

class FrontendOps {
 public:
  // `info`: Session::AttachDataPlane's answer; `view`: the same handle's receive region,
  // already mapped (it is this rank's receive region: opened once per process). Maps the rest
  // on the current CUDA device, which must be the handle's GPU.
  static StatusOr<std::unique_ptr<FrontendOps>> Open(const v1::DataPlaneInfo& info,
                                                     const HandleView& view);
  ~FrontendOps();
  FrontendOps(const FrontendOps&) = delete;
  FrontendOps& operator=(const FrontendOps&) = delete;

  // Binds routing: topk_idx [n, K] int32 (or int64), topk_weights [n, K] f32 or null (1.0);
  // device pointers valid on `stream`.
  Status Update(const void* topk_idx, bool idx_int64, const float* topk_weights, int num_tokens,
                cudaStream_t stream);
  // x [n, H] in the group dtype, n of the last Update.
  Status Dispatch(const void* x, cudaStream_t stream);
  // out [n, H]; expert outputs are every rank's recv_x, in place. There is no separate
  // expert output on this path: an address outside the daemon's memory would be valid only
  // in the process that owns it.
  Status Combine(void* out, cudaStream_t stream);

  // The first device error of the update / dispatch / combine launched since the last call,
  // as the daemon words it; clears the records. Call once the stream passed those ops.
  Status TakeErrors();
  // The epoch of a collective the last TakeErrors found timed out waiting for a peer, 0 when
  // none: the ranks' op counts may differ now, so pass it to Session::AttachDataPlane
  // (reset_epoch) and every rank restarts numbering together at its next op.
  uint64_t failed_epoch() const { return failed_epoch_; }

  uint64_t epoch() const { return epoch_; }
  // Sequence number of the last collective launched eagerly or captured, counted on the host
  // (sequence_base + those collectives this epoch): the device numbers replays on top of it.
  uint64_t last_sequence() const { return sequence_base_ + collectives_; }
  int num_tokens() const { return num_tokens_; }

 private:
  struct Records;
  struct PeerTable;
  FrontendOps() = default;
  // Uploads this process's peer table (mapped sync areas and receive buffers, by slot).
  Status BuildPeerTable();
  // Adopts the state page's epoch; UNAVAILABLE once when it moved since the last op.
  Status FollowEpoch();
  bool high_throughput() const {
    return info_.config().algorithm() == v1::ALGORITHM_HIGH_THROUGHPUT;
  }
  // The dispatch kernel of the group's algorithm on `stream` (Dispatch checked and counts).
  Status LaunchLowLatencyDispatch(const void* x, cudaStream_t stream);
  Status LaunchHighThroughputDispatch(const void* x, cudaStream_t stream);
  // The group and op fields of a collective launch from this process, device-numbered, with
  // its errors in device record `record`.
  void FillCollectiveLaunch(kernels::CollectiveLaunch& launch, int record) const;
  // Those and the group, payload (x's rows) and bound routing of a dispatch of x.
  void FillDispatchInputs(kernels::DispatchInputs& inputs, const void* x) const;

  v1::DataPlaneInfo info_;
  std::string group_;
  int device_ = 0;
  char* own_recv_ = nullptr;  // this rank's receive region (the HandleView's mapping)
  std::unique_ptr<MappedRegion> private_;
  std::vector<std::unique_ptr<MappedRegion>> peer_recv_;  // null for this rank
  std::vector<std::unique_ptr<MappedRegion>> peer_sync_;
  std::unique_ptr<PeerTable> peer_table_;
  std::unique_ptr<MappedRegion> state_page_;
  std::unique_ptr<Records> records_;
  uint64_t epoch_ = 0;
  uint64_t sequence_base_ = 0;
  uint64_t collectives_ = 0;
  uint64_t failed_epoch_ = 0;
  int num_tokens_ = 0;
};

}  // namespace epd
