// The cpu backend's group and handle (created in cpu_backend.cc, used by the op bodies of
// cpu_ops.h on the ranks' lanes).
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "daemon/backends/cpu/cpu_memory.h"
#include "daemon/backends/cpu/cpu_stream.h"
#include "daemon/backends/cpu/gloo_rank_link.h"
#include "daemon/backends/cpu/host_rendezvous.h"
#include "daemon/backends/cpu/reference_ops.h"
#include "daemon/backends/cpu/spanning_ops.h"
#include "daemon/core/backend.h"

namespace epd {

// A group's ranks meet in its rendezvous, each on its own lane: the group's stream of that
// rank, made with the rank's first handle and retired with the group (lane_registry.h).
class CpuGroup : public BackendGroup {
 public:
  CpuGroup(const GroupConfig& config, std::function<void(CpuGroup*)> forget,
           std::vector<std::unique_ptr<GlooRankLink>> links = {},
           std::shared_ptr<TransportRecord> transport = nullptr)
      : config_(config),
        rendezvous_(config.name, config.world_size()),
        transport_(std::move(transport)),
        links_(std::move(links)),
        lanes_(config.world_size(), nullptr),
        forget_(std::move(forget)) {}
  ~CpuGroup() override {
    GlooRankLink::RetireAll(links_);
    forget_(this);
  }
  const GroupConfig& config() const override { return config_; }
  std::vector<RankTransportState> transport() const override {
    return transport_ != nullptr ? transport_->State() : std::vector<RankTransportState>{};
  }
  HostRendezvous& rendezvous() { return rendezvous_; }
  // Spanning groups: cancels the exchanges in flight on every link of this daemon.
  void CancelLinks(const Status& reason, bool permanent) {
    for (auto& link : links_) {
      if (link != nullptr) link->Cancel(reason, permanent);
    }
  }
  // A spanning group's link of a group rank this daemon hosts (used on that rank's stream).
  GlooRankLink& link(int group_rank) { return *links_[group_rank]; }

  // The lane of `group_rank`, made by `make` the first time.
  CpuStream& LaneOf(int group_rank, const std::function<CpuStream*()>& make) {
    std::lock_guard lock(lanes_mutex_);
    CpuStream*& lane = lanes_[group_rank];
    if (lane == nullptr) lane = make();
    return *lane;
  }
  std::vector<CpuStream*> TakeLanes() {
    std::lock_guard lock(lanes_mutex_);
    return std::exchange(lanes_, {});
  }

 private:
  GroupConfig config_;
  HostRendezvous rendezvous_;
  std::shared_ptr<TransportRecord> transport_;  // spanning groups: what their links went through
  std::vector<std::unique_ptr<GlooRankLink>> links_;  // spanning groups: by group rank
  std::mutex lanes_mutex_;
  std::vector<CpuStream*> lanes_;  // by group rank; owned by the backend's LaneRegistry
  std::function<void(CpuGroup*)> forget_;
};

class CpuHandle : public BackendHandle {
 public:
  CpuHandle(CpuGroup& group, int group_rank, int node_rank, CpuStream& lane,
            std::unique_ptr<ExportedShm> exported, AllocationCounter& counter)
      : group_(group),
        group_rank_(group_rank),
        node_rank_(node_rank),
        lane_(lane),
        layout_(ComputeHandleLayout(group.config())),
        exported_(std::move(exported)),
        topk_idx_(layout_.topk_idx_bytes, counter),
        topk_weights_(layout_.topk_weights_bytes, counter),
        expert_counts_(layout_.expert_counts_bytes, counter),
        slots_(layout_.slot_bytes, counter) {}

  int group_rank() const override { return group_rank_; }
  int node_rank() const { return node_rank_; }
  CpuGroup& group() const { return group_; }
  CpuStream& lane() const { return lane_; }
  const GroupConfig& config() const { return group_.config(); }
  const HandleLayout& layout() const override { return layout_; }
  ExportedMemory& exported() override { return *exported_; }
  int num_tokens() const override { return submitted_tokens_.load(std::memory_order_relaxed); }
  void set_submitted_tokens(int n) { submitted_tokens_.store(n, std::memory_order_relaxed); }

  // Stream side: what the last executed UpdateHandle bound.
  reference::SourceRank Source(const void* x) const {
    return reference::SourceRank{bound_tokens_, x, topk_idx_.as<int32_t>(),
                                 topk_weights_.as<float>(), expert_counts_.as<int32_t>()};
  }
  int32_t* topk_idx() { return topk_idx_.as<int32_t>(); }
  float* topk_weights() { return topk_weights_.as<float>(); }
  int32_t* expert_counts() { return expert_counts_.as<int32_t>(); }
  int32_t* slots() { return slots_.as<int32_t>(); }
  void set_bound_tokens(int n) { bound_tokens_ = n; }
  // Stream side: a collective after a failed UpdateHandle is abandoned with its reason (the
  // engine may have enqueued it before the stream found the bad routing).
  void set_routing_status(Status status) { routing_status_ = std::move(status); }
  const Status& routing_status() const { return routing_status_; }
  spanning::ReturnRows& return_rows() { return return_rows_; }
  reference::ReceiveBuffers receive() {
    return reference::ReceiveBuffersAt(exported_->data(), layout_);
  }

 private:
  CpuGroup& group_;  // the group outlives its handles
  int group_rank_;
  int node_rank_;
  CpuStream& lane_;  // the group's lane of this rank: lives as long as the group
  HandleLayout layout_;
  std::unique_ptr<ExportedShm> exported_;
  CountedHostBuffer topk_idx_, topk_weights_, expert_counts_, slots_;
  std::atomic<int> submitted_tokens_{0};  // n of the last UpdateHandle enqueued
  int bound_tokens_ = 0;                  // n of the last UpdateHandle executed (stream only)
  Status routing_status_;                 // of the last UpdateHandle executed (stream only)
  spanning::ReturnRows return_rows_;      // spanning groups: of the last dispatch (stream only)
};

}  // namespace epd
