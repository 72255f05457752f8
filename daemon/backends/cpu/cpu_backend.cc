// The cpu backend (cpu_backend.h): groups, handles and fences in POSIX shared memory, each
// op enqueued on its rank's lane, where cpu_ops.h runs it.
#include "daemon/backends/cpu/cpu_backend.h"

#include <grp.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <mutex>
#include <random>
#include <set>

#include "common/fence_page.h"
#include "daemon/backends/cpu/cpu_objects.h"
#include "daemon/backends/cpu/cpu_ops.h"
#include "daemon/backends/cpu/shm_region.h"
#include "daemon/backends/cpu/spanning_transport.h"
#include "daemon/core/daemon_config.h"
#include "daemon/core/lane_registry.h"
#include "daemon/core/log.h"

namespace epd {
namespace {

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
    for (CpuGroup* group : groups_) {
      group->rendezvous().Shutdown();
      group->CancelLinks(UnavailableError("epd is shutting down"), /*permanent=*/true);
    }
  }

  Status CheckLiveness(std::chrono::milliseconds limit) const override {
    Status status;
    lanes_.ForEach([&](const CpuStream& lane) {
      const auto busy = lane.busy_for();
      if (status.ok() && busy > limit) {
        status = DeadlineExceededError(
            "the stream thread of {} has run one op for {} ms (limit {} ms)", lane.name(),
            std::chrono::duration_cast<std::chrono::milliseconds>(busy).count(), limit.count());
      }
    });
    return status;
  }

  void AbortGroup(BackendGroup& group, const Status& reason) override {
    static_cast<CpuGroup&>(group).rendezvous().Abort(reason);
    // Peers in other daemons then fail at their op timeout, or at once if their node died.
    static_cast<CpuGroup&>(group).CancelLinks(reason, /*permanent=*/false);
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
    std::vector<std::unique_ptr<GlooRankLink>> links;
    std::shared_ptr<TransportRecord> record;
    if (config.spans_nodes) {
      record = std::make_shared<TransportRecord>(config.HostedGroupRanks());
      EPD_ASSIGN_OR_RETURN(links, transport_.LinksFor(config, record));
    }
    auto group = std::make_unique<CpuGroup>(
        config, [this](CpuGroup* g) { ForgetGroup(g); }, std::move(links), std::move(record));
    std::lock_guard lock(groups_mutex_);
    groups_.insert(group.get());
    if (shutting_down_) {
      group->rendezvous().Shutdown();
      group->CancelLinks(UnavailableError("epd is shutting down"), /*permanent=*/true);
    }
    return std::unique_ptr<BackendGroup>(std::move(group));
  }
  void ForgetGroup(CpuGroup* group) {
    {
      std::lock_guard lock(groups_mutex_);
      groups_.erase(group);
    }
    for (CpuStream* lane : group->TakeLanes()) {
      if (lane != nullptr) lanes_.Retire(lane);
    }
  }

  StatusOr<std::unique_ptr<BackendHandle>> CreateHandle(BackendGroup& g, int group_rank) override {
    auto& group = static_cast<CpuGroup&>(g);
    const GroupConfig& config = group.config();
    if (group_rank < 0 || group_rank >= config.world_size()) {
      return InvalidArgumentError("group '{}': group rank {} is outside [0, {})", config.name,
                                  group_rank, config.world_size());
    }
    const int node_rank = config.NodeRankOf(group_rank);
    if (node_rank < 0) {
      return InvalidArgumentError("group '{}': group rank {} lives on node {}, not on this one",
                                  config.name, group_rank, config.NodeOf(group_rank));
    }
    const HandleLayout layout = ComputeHandleLayout(config);
    EPD_ASSIGN_OR_RETURN(auto region,
                         ShmRegion::Create(NextShmName("handle"), layout.exported_bytes,
                                           kExportedShmMode, ExportedShmGroup()));
    auto exported = std::make_unique<ExportedShm>(std::move(region), allocations_);
    CpuStream& lane = group.LaneOf(group_rank, [&] {
      return lanes_.Add(std::make_unique<CpuStream>(config.name, node_rank));
    });
    auto handle = std::make_unique<CpuHandle>(group, group_rank, node_rank, lane,
                                              std::move(exported), allocations_);
    return std::unique_ptr<BackendHandle>(std::move(handle));
  }

  Status WaitFence(BackendHandle& handle, ExportedMemory& fence, uint64_t value) override {
    auto& cpu = static_cast<CpuHandle&>(handle);
    const int node_rank = cpu.node_rank();
    uint64_t* counter = Counter(fence);
    cpu.lane().Enqueue([this, node_rank, counter, value] {
      return cpu::WaitCounter(node_rank, counter, value, options_.op_timeout, shutting_down_);
    });
    return OkStatus();
  }

  Status SignalFence(BackendHandle& handle, ExportedMemory& fence, uint64_t value) override {
    auto& cpu = static_cast<CpuHandle&>(handle);
    const int node_rank = cpu.node_rank();
    uint64_t* counter = Counter(fence);
    void* page = fence.data();
    cpu.lane().Enqueue([node_rank, counter, value, page] {
      std::atomic_ref<uint64_t>(*counter).store(value, std::memory_order_release);
      return cpu::CheckIntact(page, fmt::format("rank {}: fence", node_rank));
    });
    return OkStatus();
  }

  Status UpdateHandle(BackendHandle& handle, const UpdateArgs& args) override {
    auto& cpu = static_cast<CpuHandle&>(handle);
    const GroupConfig& config = cpu.config();
    if (args.num_tokens < 0 || args.num_tokens > config.max_tokens_per_rank) {
      return InvalidArgumentError("num_tokens = {} is outside [0, max_tokens_per_rank = {}]",
                                  args.num_tokens, config.max_tokens_per_rank);
    }
    cpu.set_submitted_tokens(args.num_tokens);
    cpu.lane().Enqueue([&cpu, args] {
      Status bound =
          cpu::CheckFiniteWeights(args.topk_weights, args.num_tokens, cpu.config().top_k);
      if (bound.ok()) {
        bound = reference::BindRouting(cpu.config(), args.topk_idx.data, args.topk_idx.dtype,
                                 static_cast<const float*>(args.topk_weights.data), args.num_tokens,
                                 cpu.topk_idx(), cpu.topk_weights(), cpu.expert_counts());
      }
      if (bound.ok()) bound = cpu::CheckIntact(args.topk_idx.data, "topk_idx");
      if (bound.ok()) bound = cpu::CheckIntact(args.topk_weights.data, "topk_weights");
      cpu.set_bound_tokens(bound.ok() ? args.num_tokens : 0);
      cpu.set_routing_status(bound);
      return bound;
    });
    return OkStatus();
  }

  Status Dispatch(BackendHandle& handle, const DispatchArgs& args) override {
    auto& me = static_cast<CpuHandle&>(handle);
    if (Status bad = cpu::CheckDispatchInput(me, args); !bad.ok()) {
      Abandon(handle, CollectiveKind::kDispatch, bad);
      return bad;
    }
    if (me.config().spans_nodes) {
      me.lane().Enqueue([this, &me, x = args.x.data, x_scales = args.x_scales.data] {
        return cpu::RunSpanningDispatch(me, x, x_scales, OkStatus(), options_.op_timeout);
      });
      return OkStatus();
    }
    const uint64_t seq = me.group().rendezvous().TakeSequence(me.group_rank());
    me.lane().Enqueue([this, &me, seq, x = args.x.data, x_scales = args.x_scales.data] {
      return cpu::RunDispatch(me, seq, cpu::RankPart{&me, x, x_scales}, options_.op_timeout);
    });
    return OkStatus();
  }

  Status Combine(BackendHandle& handle, const CombineArgs& args) override {
    auto& me = static_cast<CpuHandle&>(handle);
    if (Status bad = cpu::CheckTokenRows(me, args.out, "combine", "out"); !bad.ok()) {
      Abandon(handle, CollectiveKind::kCombine, bad);
      return bad;
    }
    const void* expert_out = args.expert_out != nullptr
                                 ? args.expert_out
                                 : static_cast<const void*>(me.receive().recv_x);
    if (me.config().spans_nodes) {
      me.lane().Enqueue([this, &me, expert_out, out = args.out.data] {
        return cpu::RunSpanningCombine(me, expert_out, out, OkStatus(), options_.op_timeout);
      });
      return OkStatus();
    }
    const uint64_t seq = me.group().rendezvous().TakeSequence(me.group_rank());
    me.lane().Enqueue([this, &me, seq, expert_out, out = args.out.data] {
      return cpu::RunCombine(me, seq, cpu::RankPart{&me, expert_out}, out, options_.op_timeout);
    });
    return OkStatus();
  }

  void Abandon(BackendHandle& handle, CollectiveKind kind, const Status& reason) override {
    auto& me = static_cast<CpuHandle&>(handle);
    if (me.config().spans_nodes) {
      // The peers in other daemons learn it from this rank's counts (the op still runs).
      me.lane().Enqueue([this, &me, kind, reason] {
        if (kind == CollectiveKind::kDispatch) {
          cpu::RunSpanningDispatch(me, nullptr, nullptr, reason, options_.op_timeout).IgnoreError();
        } else {
          cpu::RunSpanningCombine(me, nullptr, nullptr, reason, options_.op_timeout).IgnoreError();
        }
        return OkStatus();  // the rank reported its own reason when it gave up
      });
      return;
    }
    const uint64_t seq = me.group().rendezvous().TakeSequence(me.group_rank());
    me.lane().Enqueue([&me, seq, kind, reason] {
      me.group().rendezvous().Abandon(me.group_rank(), seq, kind, reason);
      return OkStatus();  // the rank reported its own reason when it gave up
    });
  }

  void Complete(BackendHandle& handle, std::function<void(Status)> done) override {
    static_cast<CpuHandle&>(handle).lane().Complete(std::move(done));
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
  SpanningTransport transport_{options_.cluster};
  AllocationCounter allocations_;
  std::atomic<uint64_t> next_shm_{0};
  // Frontends of the daemon's group open handle and fence objects read-write
  // (README, Security): group rw whatever the umask, and the group `epd` when it exists and
  // the daemon may give files to it (root).
  static constexpr mode_t kExportedShmMode = 0660;
  std::optional<gid_t> ExportedShmGroup() const { return exported_shm_group_; }

  const std::optional<gid_t> exported_shm_group_;
  const uint32_t shm_salt_ = std::random_device{}();
  std::atomic<bool> shutting_down_{false};
  std::mutex groups_mutex_;
  std::set<CpuGroup*> groups_;  // live groups, whose rendezvous shutdown releases
  // NOTE: last member, so the lanes finish their queued ops before anything else goes (their
  // last completions may destroy groups, which unregister above).
  LaneRegistry<CpuStream> lanes_;
};

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
  auto backend = std::make_unique<CpuBackend>(options, exported_shm_group);
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace epd
