// The CUDA backend's memory, group and handle objects (what the core holds through the
// Backend interface).
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "daemon/backends/cuda/cuda_event.h"
#include "daemon/backends/cuda/device_memory.h"
#include "daemon/backends/cuda/group_aborts.h"
#include "daemon/backends/cuda/ipc_mapping.h"
#include "daemon/backends/cuda/nccl_comms.h"
#include "daemon/backends/cuda/span_comm.h"
#include "daemon/backends/cuda/span_support.h"
#include "daemon/core/backend.h"
#include "kernels/sync_area.cuh"

namespace epd::cuda {

class OpLane;

// Daemon-owned device memory exported to frontends through a CUDA IPC handle.
class CudaExportedMemory : public ExportedMemory {
 public:
  static StatusOr<std::unique_ptr<CudaExportedMemory>> Create(int node_rank, int device,
                                                              size_t bytes,
                                                              AllocationCounter& counter,
                                                              Reclaimer& reclaimer,
                                                              cudaStream_t setup_stream);
  void* data() const override { return memory_->data(); }
  size_t size() const override { return memory_->size(); }
  int device() const override { return node_rank_; }
  MemorySource Describe() const override;

 private:
  CudaExportedMemory(int node_rank, std::unique_ptr<DeviceMemory> memory, std::string handle,
                     uint64_t offset)
      : node_rank_(node_rank),
        memory_(std::move(memory)),
        ipc_handle_(std::move(handle)),
        ipc_offset_(offset) {}
  int node_rank_;
  std::unique_ptr<DeviceMemory> memory_;
  std::string ipc_handle_;  // 64 bytes
  uint64_t ipc_offset_;     // of data() inside the IPC allocation (0 for cudaMalloc'ed blocks)
};

// A frontend's memory opened through IPC: a range of a shared mapping.
class ImportedMemory : public Memory {
 public:
  ImportedMemory(std::shared_ptr<IpcMapping> mapping, int node_rank, uint64_t offset, uint64_t size)
      : mapping_(std::move(mapping)), node_rank_(node_rank), offset_(offset), size_(size) {}
  void* data() const override { return mapping_->base() + offset_; }
  size_t size() const override { return size_; }
  int device() const override { return node_rank_; }

 private:
  std::shared_ptr<IpcMapping> mapping_;
  int node_rank_;
  uint64_t offset_;
  uint64_t size_;
};

class CudaGroup : public BackendGroup {
 public:
  // The state every group has: its config, name, sequence counters, handle slots, abort word.
  static StatusOr<std::unique_ptr<CudaGroup>> Create(const GroupConfig& config,
                                                     AllocationCounter& allocations,
                                                     Reclaimer& reclaimer);
  ~CudaGroup() override {
    if (forget_) forget_(this);
  }
  const GroupConfig& config() const override { return config_; }
  std::vector<RankTransportState> transport() const override {
    return transport_ != nullptr ? transport_->State() : std::vector<RankTransportState>{};
  }

  // The number of `group_rank`'s next collective.
  uint64_t NextSeq(int group_rank) { return seq_[group_rank].fetch_add(1) + 1; }
  // Every rank's next collective is the same op again, after the newest one issued (returned).
  uint64_t RealignSequences();
  // Ops numbered up to `through` stop waiting on the device (the word only grows).
  void RaiseAbortWord(uint64_t through);
  const uint64_t* abort_word() const { return static_cast<const uint64_t*>(abort_word_->data()); }
  const kernels::PeerTable* peer_table(int group_rank) const {
    return reinterpret_cast<const kernels::PeerTable*>(peer_tables_[group_rank]->data());
  }
  // The lane (op_lane.h) of `group_rank`, made by `make` the first time; owned by the
  // backend's LaneRegistry, retired when the group goes.
  StatusOr<OpLane*> LaneOf(int group_rank, const std::function<StatusOr<OpLane*>()>& make);
  std::vector<OpLane*> TakeLanes();
  // A free slot of `group_rank`'s PeerTable entries, or -1 when all are taken.
  int ClaimSlot(int group_rank);
  void ReleaseSlot(int group_rank, int slot);

  GroupConfig config_;
  std::shared_ptr<const std::string> name_;          // shared with pending ops' error messages
  std::vector<int> devices_;                         // CUDA device of each group rank
  // SyncArea of each group rank; exported: frontend-launched ranks map them.
  std::vector<std::unique_ptr<CudaExportedMemory>> sync_;
  kernels::SyncAreas sync_areas_{};  // sync_'s addresses, passed by value to every launch
  // PeerTable on each group rank's GPU: every rank's SyncArea (written at creation) and each
  // live handle's receive buffers in its slot (written at CreateHandle).
  std::vector<std::unique_ptr<DeviceMemory>> peer_tables_;
  std::unique_ptr<PinnedHostMemory> abort_word_;  // host-mapped; the kernels poll it
  std::shared_ptr<GroupAborts> aborts_ = std::make_shared<GroupAborts>();
  // Collective ops issued so far by each group rank (its worker increments it; AbortGroup
  // realigns), and every rank issues the group's collectives in the same order.
  std::unique_ptr<std::atomic<uint64_t>[]> seq_;
  std::mutex slots_mu_;
  std::vector<std::vector<bool>> slot_used_;  // [group rank][slot]
  std::function<void(CudaGroup*)> forget_;    // unregisters it and retires its lanes
  std::mutex lanes_mu_;
  std::vector<OpLane*> lanes_;  // by group rank; null until the rank's first handle
  LazyNcclComms nccl_;  // created by the first collective that needs NCCL
  int sm_count_ = 0;    // SMs of the smallest of the group's GPUs
  int max_blocks_ = 1;  // grid bound of the collectives (high-throughput: its SM budget)
  // Groups that span daemons and whose host reads the dispatch headers (SpanReadsHeaders): where
  // each node rank's dispatch headers land (R headers per node rank; kernels/span_messages.h).
  std::unique_ptr<PinnedHostMemory> span_headers_;
  // Groups that span daemons: what their communicators went through (span_ tells it).
  std::shared_ptr<TransportRecord> transport_;
  // Groups that span daemons: the NCCL communicators of the ranks hosted here (cuda_span_ops.cc).
  // NOTE: last: its watchdog may still call into the members above until it is gone.
  std::unique_ptr<SpanComm> span_;
};

// Private, daemon-only buffers of a handle (the exported region is HandleLayout's).
struct HandlePrivateLayout {
  size_t topk_idx = 0, topk_weights = 0, expert_counts = 0, slot = 0, local_rank = 0,
         bound_tokens = 0, bytes = 0;
  size_t dest_row = 0, dest_counts = 0;  // high-throughput only (kernels/routing.cuh)
  // The chunked routing bind's scratch (kernels/routing_scratch.h); 0 bytes for small T.
  size_t route_scratch = 0, route_scratch_bytes = 0;
};
HandlePrivateLayout ComputePrivateLayout(const GroupConfig& config);
// Entries per source of a group's SyncArea inbox, before n and the handle slot.
int InboxExperts(const GroupConfig& config);

class CudaHandle : public BackendHandle {
 public:
  ~CudaHandle() override {
    if (group_ != nullptr && slot_ >= 0) group_->ReleaseSlot(group_rank_, slot_);
  }
  int group_rank() const override { return group_rank_; }
  const HandleLayout& layout() const override { return layout_; }
  ExportedMemory& exported() override { return *exported_; }
  int num_tokens() const override { return num_tokens_.load(std::memory_order_relaxed); }
  // What it allocated: the exported and private regions, and a spanning group's exchange.
  uint64_t held_bytes() const override {
    return exported_->size() + private_->size() +
           (span_buffers_ != nullptr ? span_buffers_->size() : 0);
  }

  template <typename T>
  T* priv(size_t offset) const {
    return reinterpret_cast<T*>(static_cast<char*>(private_->data()) + offset);
  }
  template <typename T>
  T* recv(size_t offset, size_t bytes) const {
    return bytes == 0 ? nullptr
                      : reinterpret_cast<T*>(static_cast<char*>(exported_->data()) + offset);
  }

  CudaGroup* group_ = nullptr;
  int group_rank_ = 0;
  int node_rank_ = 0;
  OpLane* lane_ = nullptr;  // its group's lane of its rank: lives as long as the group
  int slot_ = -1;  // where its receive buffers are published in the group's PeerTables
  HandleLayout layout_;
  HandlePrivateLayout private_layout_;
  std::unique_ptr<CudaExportedMemory> exported_;
  std::unique_ptr<CudaExportedMemory> private_;  // exported for the frontend-launched path
  std::atomic<int> num_tokens_{0};
  // Groups that span daemons: the NCCL message buffers and the plan (kernels/span_messages.h).
  std::unique_ptr<DeviceMemory> span_buffers_;
  // High-throughput: a dispatch whose headers were exchanged and whose payload exchange waits
  // for them to arrive (Backend::EnqueueDeferred, on the rank worker once the lane is done).
  // Groups whose host reads the dispatch headers (SpanReadsHeaders): the event after which the
  // last dispatch's headers are on the host; the rows each return message of the next combine
  // carries (span_support.h), read from them — expert-major low-latency only when that combine
  // comes (span_rows_unread_: the generation the dispatch went on; its lane, not the rank
  // worker, waits for them: PrepareInBackground), so no other op waits.
  struct SpanPending {
    uint64_t seq = 0;
    int64_t generation = -1;  // the communicator the headers went on
    bool abandoned = false;
    FenceSignal signal;
  };
  std::optional<SpanPending> span_pending_;
  std::unique_ptr<CudaEvent> span_counted_;
  SpanRows span_rows_;
  std::optional<int64_t> span_rows_unread_;
};

}  // namespace epd::cuda
