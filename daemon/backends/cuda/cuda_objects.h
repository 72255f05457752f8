// The CUDA backend's memory, group and handle objects (what the core holds through the
// Backend interface).
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "daemon/backends/cuda/device_memory.h"
#include "daemon/backends/cuda/ipc_mapping.h"
#include "daemon/backends/cuda/nccl_comms.h"
#include "daemon/core/backend.h"

namespace epd::cuda {

// Daemon-owned device memory exported to frontends through a CUDA IPC handle.
class CudaExportedMemory : public ExportedMemory {
 public:
  static StatusOr<std::unique_ptr<CudaExportedMemory>> Create(int node_rank, int device,
                                                              size_t bytes,
                                                              AllocationCounter& counter,
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
  const GroupConfig& config() const override { return config_; }

  GroupConfig config_;
  std::shared_ptr<const std::string> name_;          // shared with pending ops' error messages
  std::vector<int> devices_;                         // CUDA device of each group rank
  // SyncArea of each group rank; exported: frontend-launched ranks map them.
  std::vector<std::unique_ptr<CudaExportedMemory>> sync_;
  // Collective ops issued so far by each group rank; only that rank's worker touches its
  // entry, and every rank issues the group's collectives in the same order.
  std::unique_ptr<uint64_t[]> seq_;
  std::unique_ptr<NcclComms> comms_;
  int sm_count_ = 0;    // SMs of the smallest of the group's GPUs
  int max_blocks_ = 1;  // grid bound of the collectives
};

// Private, daemon-only buffers of a handle (the exported region is HandleLayout's).
struct HandlePrivateLayout {
  size_t topk_idx = 0, topk_weights = 0, expert_counts = 0, slot = 0, local_rank = 0,
         bound_tokens = 0, bytes = 0;
};
HandlePrivateLayout ComputePrivateLayout(const GroupConfig& config);

class CudaHandle : public BackendHandle {
 public:
  int group_rank() const override { return group_rank_; }
  const HandleLayout& layout() const override { return layout_; }
  ExportedMemory& exported() override { return *exported_; }
  int num_tokens() const override { return num_tokens_.load(std::memory_order_relaxed); }

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
  HandleLayout layout_;
  HandlePrivateLayout private_layout_;
  std::unique_ptr<CudaExportedMemory> exported_;
  std::unique_ptr<CudaExportedMemory> private_;  // exported for the frontend-launched path
  std::atomic<int> num_tokens_{0};
};

}  // namespace epd::cuda
