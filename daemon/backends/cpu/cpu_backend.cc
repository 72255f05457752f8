#include "daemon/backends/cpu/cpu_backend.h"

#include <grp.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "daemon/backends/cpu/reference_ops.h"
#include "daemon/backends/cpu/shm_fault_guard.h"
#include "daemon/backends/cpu/shm_region.h"
#include "common/fence_page.h"
#include "daemon/core/daemon_config.h"
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
  explicit ImportedShm(std::unique_ptr<ShmRegion> region) : region_(std::move(region)) {}
  void* data() const override { return region_->data(); }
  size_t size() const override { return region_->size(); }
  int device() const override { return -1; }

 private:
  std::unique_ptr<ShmRegion> region_;  // maps only the registered range
};

// Fails an op whose memory a client truncated while the daemon had it mapped: the daemon
// then read or wrote zero pages instead (shm_fault_guard.h), so the result is meaningless.
Status CheckIntact(const void* data, std::string_view what) {
  if (data == nullptr || !ShmFaultGuard::BrokenAt(data, 1)) return OkStatus();
  return FailedPreconditionError(
      "{}: its shared memory object was truncated while the daemon had it mapped; release "
      "it and register (or create) it again",
      what);
}

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

// Weights scale expert outputs in Combine: a NaN or infinity would silently poison the
// frontend's output, so it is refused naming the entry. (The cuda backend's weights live on
// the device, where this check belongs in its routing kernel.)
Status CheckFiniteWeights(const TensorView& weights, int num_tokens, int top_k) {
  const auto* w = static_cast<const float*>(weights.data);
  if (w == nullptr) return OkStatus();
  for (int t = 0; t < num_tokens; ++t) {
    for (int k = 0; k < top_k; ++k) {
      const float value = w[static_cast<size_t>(t) * top_k + k];
      if (!std::isfinite(value)) {
        return InvalidArgumentError("topk_weights[{}][{}] = {} is not a finite number", t, k,
                                    value);
      }
    }
  }
  return OkStatus();
}

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
  CpuBackend(const CpuBackendOptions& options, std::optional<gid_t> exported_shm_group)
      : options_(options), exported_shm_group_(exported_shm_group) {}

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
    if (source.size == 0) return InvalidArgumentError("source.size must be > 0");
    EPD_ASSIGN_OR_RETURN(std::unique_ptr<ShmRegion> region,
                         ShmRegion::Open(source.shm_name, "source.shm_name", source.offset,
                                         source.size, source.requester));
    return std::shared_ptr<Memory>(std::make_shared<ImportedShm>(std::move(region)));
  }

  StatusOr<std::unique_ptr<ExportedMemory>> CreateFence(int node_rank) override {
    EPD_ASSIGN_OR_RETURN(auto region, ShmRegion::Create(NextShmName("fence"), kFencePageBytes,
                                                        kExportedShmMode, ExportedShmGroup()));
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
                         ShmRegion::Create(NextShmName("handle"), layout.exported_bytes,
                                           kExportedShmMode, ExportedShmGroup()));
    auto exported = std::make_unique<ExportedShm>(std::move(region), allocations_);
    return std::unique_ptr<BackendHandle>(
        std::make_unique<CpuHandle>(group.config(), group_rank, std::move(exported), allocations_));
  }

  Status WaitFence(int node_rank, ExportedMemory& fence, uint64_t value) override {
    std::atomic_ref<uint64_t> counter(*Counter(fence));
    const Deadline deadline = Clock::now() + options_.op_timeout;
    auto pause = std::chrono::microseconds(1);
    while (counter.load(std::memory_order_acquire) < value) {
      EPD_RETURN_IF_ERROR(CheckIntact(fence.data(), fmt::format("rank {}: fence", node_rank)));
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
    return CheckIntact(fence.data(), fmt::format("rank {}: fence", node_rank));
  }

  Status UpdateHandle(BackendHandle& handle, const UpdateArgs& args) override {
    auto& cpu = static_cast<CpuHandle&>(handle);
    const GroupConfig& config = cpu.config();
    EPD_RETURN_IF_ERROR(CheckFiniteWeights(args.topk_weights, args.num_tokens, config.top_k));
    EPD_RETURN_IF_ERROR(reference::BindRouting(config, args.topk_idx.data, args.topk_idx.dtype,
                                               static_cast<const float*>(args.topk_weights.data),
                                               args.num_tokens, cpu.topk_idx(), cpu.topk_weights(),
                                               cpu.expert_counts()));
    EPD_RETURN_IF_ERROR(CheckIntact(args.topk_idx.data, "topk_idx"));
    EPD_RETURN_IF_ERROR(CheckIntact(args.topk_weights.data, "topk_weights"));
    cpu.set_num_tokens(args.num_tokens);
    return OkStatus();
  }

  Status Dispatch(BackendGroup& group, int group_rank,
                  const std::vector<DispatchArgs>& all) override {
    const GroupConfig& config = group.config();
    std::vector<reference::SourceRank> sources;
    for (const DispatchArgs& args : all) {
      sources.push_back(static_cast<CpuHandle*>(args.handle)->Source(args.x.data));
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
    if (status.ok()) status = barrier;
    // Every rank read every rank's x: a truncated one spoils all ranks' results.
    for (size_t s = 0; s < all.size() && status.ok(); ++s) {
      status = CheckIntact(all[s].x.data, fmt::format("dispatch: group rank {}'s x", s));
    }
    if (status.ok()) {
      status = CheckIntact(all[group_rank].handle->exported().data(), "dispatch: the handle");
    }
    return status;
  }

  Status Combine(BackendGroup& group, int group_rank,
                 const std::vector<CombineArgs>& all) override {
    const GroupConfig& config = group.config();
    auto& me = static_cast<CpuHandle&>(*all[group_rank].handle);
    std::vector<const void*> expert_out;
    for (const CombineArgs& args : all) expert_out.push_back(args.expert_out);
    reference::Combine(config, me.Source(nullptr), me.slots(), expert_out,
                       all[group_rank].out.data);
    Status status = static_cast<CpuGroup&>(group).barrier().Wait(
        options_.op_timeout, fmt::format("group '{}' combine", config.name));
    for (size_t s = 0; s < all.size() && status.ok(); ++s) {
      status = CheckIntact(all[s].expert_out,
                           fmt::format("combine: group rank {}'s expert outputs", s));
    }
    if (status.ok()) status = CheckIntact(all[group_rank].out.data, "combine: out");
    return status;
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

  // Frontends of the daemon's group open handle and fence objects read-write
  // (README, Security): group rw whatever the umask, and the group `epd` when it exists and
  // the daemon may give files to it (root).
  static constexpr mode_t kExportedShmMode = 0660;
  std::optional<gid_t> ExportedShmGroup() const { return exported_shm_group_; }

  CpuBackendOptions options_;
  const std::optional<gid_t> exported_shm_group_;
  AllocationCounter allocations_;
  std::atomic<uint64_t> next_shm_{0};
  const uint32_t shm_salt_ = std::random_device{}();
  std::atomic<bool> shutting_down_{false};
  std::mutex groups_mutex_;
  std::set<CpuGroup*> groups_;  // live groups, whose barriers shutdown breaks
};

void ForgetGroup(CpuBackend& backend, CpuGroup* group) { backend.ForgetGroup(group); }

}  // namespace

std::optional<gid_t> DefaultExportedShmGroup() {
  if (geteuid() != 0) return std::nullopt;  // others cannot give files to another group
  std::vector<char> scratch(16384);
  group entry{};
  group* found = nullptr;
  if (getgrnam_r("epd", &entry, scratch.data(), scratch.size(), &found) != 0 || found == nullptr) {
    return std::nullopt;
  }
  return found->gr_gid;
}

StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(const CpuBackendOptions& options,
                                                    std::optional<gid_t> exported_shm_group) {
  if (options.ranks < 1 || options.ranks > kMaxCpuRanks) {
    return InvalidArgumentError("cpu_ranks = {} must be in [1, {}]", options.ranks, kMaxCpuRanks);
  }
  return std::unique_ptr<Backend>(std::make_unique<CpuBackend>(options, exported_shm_group));
}

}  // namespace epd
