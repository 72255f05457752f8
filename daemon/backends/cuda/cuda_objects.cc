#include "daemon/backends/cuda/cuda_objects.h"

#include <cuda.h>

#include <algorithm>
#include <atomic>

#include "common/cuda_check.h"
#include "common/cuda_driver.h"
#include "kernels/ht_dispatch.cuh"
#include "kernels/routing_scratch.h"

namespace epd::cuda {

StatusOr<std::unique_ptr<CudaExportedMemory>> CudaExportedMemory::Create(
    int node_rank, int device, size_t bytes, AllocationCounter& counter, Reclaimer& reclaimer,
    cudaStream_t setup_stream) {
  EPD_ASSIGN_OR_RETURN(const DriverApi* driver, Driver());
  EPD_ASSIGN_OR_RETURN(auto memory,
                       DeviceMemory::Create(device, bytes, counter, reclaimer, setup_stream));
  cudaIpcMemHandle_t handle;
  EPD_CUDA_CHECK(cudaIpcGetMemHandle(&handle, memory->data()));
  // A client opening the handle gets the allocation's base: tell it where our bytes start.
  CUdeviceptr base = 0;
  size_t range = 0;
  EPD_CU_CHECK(
      driver->mem_get_address_range(&base, &range, reinterpret_cast<CUdeviceptr>(memory->data())));
  const uint64_t offset = reinterpret_cast<CUdeviceptr>(memory->data()) - base;
  return std::unique_ptr<CudaExportedMemory>(new CudaExportedMemory(
      node_rank, std::move(memory),
      std::string(reinterpret_cast<const char*>(&handle), sizeof(handle)), offset));
}

MemorySource CudaExportedMemory::Describe() const {
  MemorySource source;
  source.kind = MemorySource::Kind::kCudaIpc;
  source.ipc_handle = ipc_handle_;
  source.device = node_rank_;
  source.offset = ipc_offset_;
  source.size = memory_->size();
  return source;
}

HandlePrivateLayout ComputePrivateLayout(const GroupConfig& c) {
  const size_t selections = static_cast<size_t>(c.max_tokens_per_rank) * c.top_k;
  HandlePrivateLayout p;
  size_t cursor = 0;
  auto place = [&cursor](size_t bytes) {
    const size_t at = cursor;
    cursor = AlignUp(cursor + bytes);
    return at;
  };
  p.topk_idx = place(selections * sizeof(int32_t));
  p.topk_weights = place(selections * sizeof(float));
  p.expert_counts = place(static_cast<size_t>(c.experts) * sizeof(int32_t));
  p.slot = place(selections * sizeof(int32_t));
  p.local_rank = place(selections * sizeof(int32_t));
  p.bound_tokens = place(sizeof(int32_t));
  if (c.high_throughput()) {
    const HandleLayout layout = ComputeHandleLayout(c);
    p.dest_row = place(layout.dest_row_bytes);
    p.dest_counts = place(layout.dest_counts_bytes);
  }
  // Sized for n = T once here, so UpdateHandle allocates nothing for any n.
  p.route_scratch_bytes = kernels::RoutingScratchBytes(c.max_tokens_per_rank, c.experts,
                                                       c.world_size(), c.high_throughput());
  p.route_scratch = place(p.route_scratch_bytes);
  p.bytes = cursor;
  return p;
}

int InboxExperts(const GroupConfig& c) {
  return c.high_throughput() ? kernels::HtInboxExperts(c.experts, c.world_size()) : c.experts;
}

StatusOr<std::unique_ptr<CudaGroup>> CudaGroup::Create(const GroupConfig& config,
                                                       AllocationCounter& allocations,
                                                       Reclaimer& reclaimer) {
  const int R = config.world_size();
  auto group = std::make_unique<CudaGroup>();
  group->config_ = config;
  group->name_ = std::make_shared<const std::string>(config.name);
  group->seq_ = std::make_unique<std::atomic<uint64_t>[]>(R);
  group->slot_used_.assign(R, std::vector<bool>(kernels::kMaxHandleSlots, false));
  EPD_ASSIGN_OR_RETURN(group->abort_word_,
                       PinnedHostMemory::Create(sizeof(uint64_t), allocations, &reclaimer));
  return group;
}

uint64_t CudaGroup::RealignSequences() {
  const int R = config_.world_size();
  uint64_t newest = 0;
  for (int r = 0; r < R; ++r) newest = std::max(newest, seq_[r].load());
  for (int r = 0; r < R; ++r) {
    uint64_t seen = seq_[r].load();
    while (seen < newest && !seq_[r].compare_exchange_weak(seen, newest)) {
    }
  }
  return newest;
}

void CudaGroup::RaiseAbortWord(uint64_t through) {
  std::atomic_ref<uint64_t> word(*static_cast<uint64_t*>(abort_word_->data()));
  uint64_t seen = word.load();
  while (seen < through && !word.compare_exchange_weak(seen, through, std::memory_order_release)) {
  }
}

StatusOr<OpLane*> CudaGroup::LaneOf(int group_rank,
                                    const std::function<StatusOr<OpLane*>()>& make) {
  std::lock_guard lock(lanes_mu_);
  if (lanes_.empty()) lanes_.assign(config_.world_size(), nullptr);
  OpLane*& lane = lanes_[group_rank];
  if (lane == nullptr) {
    EPD_ASSIGN_OR_RETURN(lane, make());
  }
  return lane;
}

std::vector<OpLane*> CudaGroup::TakeLanes() {
  std::lock_guard lock(lanes_mu_);
  return std::exchange(lanes_, {});
}

int CudaGroup::ClaimSlot(int group_rank) {
  std::lock_guard lock(slots_mu_);
  std::vector<bool>& used = slot_used_[group_rank];
  for (int slot = 0; slot < static_cast<int>(used.size()); ++slot) {
    if (!used[slot]) {
      used[slot] = true;
      return slot;
    }
  }
  return -1;
}

void CudaGroup::ReleaseSlot(int group_rank, int slot) {
  std::lock_guard lock(slots_mu_);
  slot_used_[group_rank][slot] = false;
}

}  // namespace epd::cuda
