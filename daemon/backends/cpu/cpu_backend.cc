#include "daemon/backends/cpu/cpu_backend.h"

#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "daemon/backends/cpu/reference_ops.h"
#include "daemon/backends/cpu/shm_region.h"
#include "common/fence_page.h"
#include "daemon/core/log.h"

namespace epd {
namespace {

// Host memory that counts itself in the backend's AllocationCounter.
class CountedHostBuffer {
 public:
  CountedHostBuffer(size_t bytes, AllocationCounter& counter)
      : data_(new std::byte[bytes]()), bytes_(bytes), counter_(counter) {
    counter_.OnAllocate(bytes_);
  }
  ~CountedHostBuffer() { counter_.OnFree(bytes_); }
  template <typename T>
  T* as() const {
    return reinterpret_cast<T*>(data_.get());
  }

 private:
  std::unique_ptr<std::byte[]> data_;
  size_t bytes_;
  AllocationCounter& counter_;
};

class ImportedShm : public Memory {
 public:
  ImportedShm(std::unique_ptr<ShmRegion> region, uint64_t offset, uint64_t size)
      : region_(std::move(region)), offset_(offset), size_(size) {}
  void* data() const override { return static_cast<char*>(region_->data()) + offset_; }
  size_t size() const override { return size_; }
  int device() const override { return -1; }

 private:
  std::unique_ptr<ShmRegion> region_;
  uint64_t offset_;
  uint64_t size_;
};

class ExportedShm : public ExportedMemory {
 public:
  ExportedShm(std::unique_ptr<ShmRegion> region, AllocationCounter& counter)
      : region_(std::move(region)), counter_(counter) {
    counter_.OnAllocate(region_->size());
  }
  ~ExportedShm() override { counter_.OnFree(region_->size()); }
  void* data() const override { return region_->data(); }
  size_t size() const override { return region_->size(); }
  int device() const override { return -1; }
  MemorySource Describe() const override {
    MemorySource source;
    source.kind = MemorySource::Kind::kHostShm;
    source.shm_name = region_->name();
    source.size = region_->size();
    return source;
  }

 private:
  std::unique_ptr<ShmRegion> region_;
  AllocationCounter& counter_;
};

// All ranks of a cpu collective meet here once their part is done, so that no rank returns
// (and lets its frontend reuse inputs) while a peer still reads them. Bounded: a timeout
// breaks the barrier for good, failing the group's later collectives instead of hanging.
class TimedBarrier {
 public:
  explicit TimedBarrier(int count) : count_(count) {}
  // Fails every current and future wait: the daemon is stopping.
  void Break() {
    std::lock_guard lock(mutex_);
    broken_ = true;
    changed_.notify_all();
  }

  Status Wait(std::chrono::milliseconds timeout, std::string_view what) {
    std::unique_lock lock(mutex_);
    if (broken_)
      return InternalError("{}: the group's barrier broke after an earlier timeout", what);
    const uint64_t generation = generation_;
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++generation_;
      changed_.notify_all();
      return OkStatus();
    }
    if (!changed_.wait_for(lock, timeout, [&] { return generation_ != generation || broken_; })) {
      broken_ = true;
      changed_.notify_all();
      return DeadlineExceededError("{}: peers did not finish within {} ms", what, timeout.count());
    }
    if (broken_) return InternalError("{}: the group's barrier broke", what);
    return OkStatus();
  }

 private:
  const int count_;
  std::mutex mutex_;
  std::condition_variable changed_;
  int arrived_ = 0;
  uint64_t generation_ = 0;
  bool broken_ = false;
};

class CpuBackend;
void ForgetGroup(CpuBackend& backend, class CpuGroup* group);

class CpuGroup : public BackendGroup {
 public:
  CpuGroup(const GroupConfig& config, CpuBackend& backend)
      : config_(config), barrier_(config.world_size()), backend_(backend) {}
  ~CpuGroup() override { ForgetGroup(backend_, this); }
  const GroupConfig& config() const override { return config_; }
  TimedBarrier& barrier() { return barrier_; }

 private:
  GroupConfig config_;
  TimedBarrier barrier_;
  CpuBackend& backend_;
};

class CpuHandle : public BackendHandle {
 public:
  CpuHandle(const GroupConfig& config, int group_rank, std::unique_ptr<ExportedShm> exported,
            AllocationCounter& counter)
      : config_(config),
        group_rank_(group_rank),
        layout_(ComputeHandleLayout(config)),
        exported_(std::move(exported)),
        topk_idx_(layout_.topk_idx_bytes, counter),
        topk_weights_(layout_.topk_weights_bytes, counter),
        expert_counts_(layout_.expert_counts_bytes, counter),
        slots_(layout_.slot_bytes, counter) {}

  int group_rank() const override { return group_rank_; }
  const GroupConfig& config() const { return config_; }
  const HandleLayout& layout() const override { return layout_; }
  ExportedMemory& exported() override { return *exported_; }
  int num_tokens() const override { return num_tokens_; }

  reference::SourceRank Source(const void* x) const {
    return reference::SourceRank{num_tokens_, x, topk_idx_.as<int32_t>(), topk_weights_.as<float>(),
                                 expert_counts_.as<int32_t>()};
  }
  int32_t* topk_idx() { return topk_idx_.as<int32_t>(); }
  float* topk_weights() { return topk_weights_.as<float>(); }
  int32_t* expert_counts() { return expert_counts_.as<int32_t>(); }
  int32_t* slots() { return slots_.as<int32_t>(); }
  void set_num_tokens(int n) { num_tokens_ = n; }

 private:
  const GroupConfig& config_;  // the group outlives its handles
  int group_rank_;
  HandleLayout layout_;
  std::unique_ptr<ExportedShm> exported_;
  CountedHostBuffer topk_idx_, topk_weights_, expert_counts_, slots_;
  int num_tokens_ = 0;
};

class CpuBackend : public Backend {
 public:
  explicit CpuBackend(const CpuBackendOptions& options) : options_(options) {}

  NodeDescription Describe() const override {
    NodeDescription node;
    node.backend = "cpu";
    node.ranks = options_.ranks;
    return node;
  }
  int num_ranks() const override { return options_.ranks; }
  AllocationCounter& allocations() override { return allocations_; }
  std::chrono::milliseconds op_timeout() const override { return options_.op_timeout; }

  void BeginShutdown() override {
    shutting_down_ = true;
    std::lock_guard lock(groups_mutex_);
    for (CpuGroup* group : groups_) group->barrier().Break();
  }

  StatusOr<std::shared_ptr<Memory>> Import(const MemorySource& source, int node_rank) override {
    if (source.kind != MemorySource::Kind::kHostShm) {
      return InvalidArgumentError(
          "source.cuda_ipc_handle: the cpu backend only accepts host shared memory (shm_name)");
    }
    EPD_ASSIGN_OR_RETURN(std::unique_ptr<ShmRegion> region,
                         ShmRegion::Open(source.shm_name, "source.shm_name"));
    if (source.offset > region->size() || source.size > region->size() - source.offset) {
      return InvalidArgumentError(
          "source (offset = {}, size = {}) lies outside shm object '{}' of {} bytes", source.offset,
          source.size, source.shm_name, region->size());
    }
    return std::shared_ptr<Memory>(
        std::make_shared<ImportedShm>(std::move(region), source.offset, source.size));
  }

  StatusOr<std::unique_ptr<ExportedMemory>> CreateFence(int node_rank) override {
    EPD_ASSIGN_OR_RETURN(auto region, ShmRegion::Create(NextShmName("fence"), kFencePageBytes));
    const FencePageHeader header = MakeFencePageHeader();
    std::memcpy(region->data(), &header, sizeof(header));
    return std::unique_ptr<ExportedMemory>(
        std::make_unique<ExportedShm>(std::move(region), allocations_));
  }

  StatusOr<std::unique_ptr<BackendGroup>> CreateGroup(const GroupConfig& config) override {
    auto group = std::make_unique<CpuGroup>(config, *this);
    std::lock_guard lock(groups_mutex_);
    groups_.insert(group.get());
    return std::unique_ptr<BackendGroup>(std::move(group));
  }
  void ForgetGroup(CpuGroup* group) {
    std::lock_guard lock(groups_mutex_);
    groups_.erase(group);
  }

  StatusOr<std::unique_ptr<BackendHandle>> CreateHandle(BackendGroup& group,
                                                        int group_rank) override {
    const HandleLayout layout = ComputeHandleLayout(group.config());
    EPD_ASSIGN_OR_RETURN(auto region,
                         ShmRegion::Create(NextShmName("handle"), layout.exported_bytes));
    auto exported = std::make_unique<ExportedShm>(std::move(region), allocations_);
    return std::unique_ptr<BackendHandle>(
        std::make_unique<CpuHandle>(group.config(), group_rank, std::move(exported), allocations_));
  }

  Status WaitFence(int node_rank, ExportedMemory& fence, uint64_t value) override {
    std::atomic_ref<uint64_t> counter(*Counter(fence));
    const Deadline deadline = Clock::now() + options_.op_timeout;
    auto pause = std::chrono::microseconds(1);
    while (counter.load(std::memory_order_acquire) < value) {
      if (shutting_down_) {
        return UnavailableError("rank {}: fence wait for value {} cancelled: epd is shutting down",
                                node_rank, value);
      }
      if (Clock::now() > deadline) {
        return DeadlineExceededError(
            "rank {}: fence wait for value {} timed out after {} ms (counter = {})", node_rank,
            value, options_.op_timeout.count(), counter.load(std::memory_order_acquire));
      }
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::microseconds(200));
    }
    return OkStatus();
  }

  Status SignalFence(int node_rank, ExportedMemory& fence, uint64_t value) override {
    std::atomic_ref<uint64_t>(*Counter(fence)).store(value, std::memory_order_release);
    return OkStatus();
  }

  Status UpdateHandle(BackendHandle& handle, const UpdateArgs& args) override {
    auto& cpu = static_cast<CpuHandle&>(handle);
    const GroupConfig& config = cpu.config();
    EPD_RETURN_IF_ERROR(reference::BindRouting(config, args.topk_idx.data, args.topk_idx.dtype,
                                               static_cast<const float*>(args.topk_weights.data),
                                               args.num_tokens, cpu.topk_idx(), cpu.topk_weights(),
                                               cpu.expert_counts()));
    cpu.set_num_tokens(args.num_tokens);
    return OkStatus();
  }

  Status Dispatch(BackendGroup& group, int group_rank,
                  const std::vector<DispatchArgs>& all) override {
    const GroupConfig& config = group.config();
    std::vector<reference::SourceRank> sources;
    for (const DispatchArgs& args : all) {
      sources.push_back(static_cast<CpuHandle*>(args.handle)->Source(args.x.data));
      sources.back().x_scales = args.x_scales.data;
    }
    // Every rank sees the same counts, so every rank reports the same overflow.
    Status status = reference::CheckCapacity(config, sources);
    if (status.ok()) {
      auto& me = static_cast<CpuHandle&>(*all[group_rank].handle);
      reference::DispatchReceive(config, group_rank, sources,
                                 reference::ReceiveBuffersAt(me.exported().data(), me.layout()));
      reference::ComputeSlots(config, group_rank, sources, me.slots());
    }
    Status barrier = static_cast<CpuGroup&>(group).barrier().Wait(
        options_.op_timeout, fmt::format("group '{}' dispatch", config.name));
    return status.ok() ? barrier : status;
  }

  Status Combine(BackendGroup& group, int group_rank,
                 const std::vector<CombineArgs>& all) override {
    const GroupConfig& config = group.config();
    auto& me = static_cast<CpuHandle&>(*all[group_rank].handle);
    std::vector<const void*> expert_out;
    for (const CombineArgs& args : all) expert_out.push_back(args.expert_out);
    reference::Combine(config, me.Source(nullptr), me.slots(), expert_out,
                       all[group_rank].out.data);
    return static_cast<CpuGroup&>(group).barrier().Wait(
        options_.op_timeout, fmt::format("group '{}' combine", config.name));
  }

  // The cpu backend runs ops to completion on the worker: nothing is left to wait for.
  void Complete(BackendHandle& handle, std::function<void(Status)> done) override {
    done(OkStatus());
  }

 private:
  static uint64_t* Counter(ExportedMemory& fence) {
    return reinterpret_cast<uint64_t*>(static_cast<char*>(fence.data()) + kFenceCounterOffset);
  }
  // The salt keeps names unique when a pid is reused after a killed daemon left objects behind.
  std::string NextShmName(std::string_view kind) {
    return fmt::format("/epd-{}-{:08x}-{}-{}", getpid(), shm_salt_, kind, next_shm_.fetch_add(1));
  }

  CpuBackendOptions options_;
  AllocationCounter allocations_;
  std::atomic<uint64_t> next_shm_{0};
  const uint32_t shm_salt_ = std::random_device{}();
  std::atomic<bool> shutting_down_{false};
  std::mutex groups_mutex_;
  std::set<CpuGroup*> groups_;  // live groups, whose barriers shutdown breaks
};

void ForgetGroup(CpuBackend& backend, CpuGroup* group) { backend.ForgetGroup(group); }

}  // namespace

StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(const CpuBackendOptions& options) {
  if (options.ranks < 1 || options.ranks > 64) {
    return InvalidArgumentError("cpu_ranks = {} must be in [1, 64]", options.ranks);
  }
  return std::unique_ptr<Backend>(std::make_unique<CpuBackend>(options));
}

}  // namespace epd
