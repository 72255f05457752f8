#include "daemon/backends/cpu/cpu_backend.h"

#include <unistd.h>

#include <grp.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "common/fence_page.h"
#include "common/routing_errors.h"
#include "daemon/backends/cpu/cpu_memory.h"
#include "daemon/backends/cpu/cpu_stream.h"
#include "daemon/backends/cpu/host_rendezvous.h"
#include "daemon/backends/cpu/reference_ops.h"
#include "daemon/backends/cpu/shm_fault_guard.h"
#include "daemon/backends/cpu/shm_region.h"
#include "daemon/backends/cpu/spanning_ops.h"
#include "daemon/backends/cpu/spanning_transport.h"
#include "daemon/core/daemon_config.h"
#include "daemon/core/lane_registry.h"
#include "daemon/core/log.h"

namespace epd {
namespace {

// Fails an op whose memory a client truncated while the daemon had it mapped: the daemon
// then read or wrote zero pages instead (shm_fault_guard.h), so the result is meaningless.
Status CheckIntact(const void* data, std::string_view what) {
  if (data == nullptr || !ShmFaultGuard::BrokenAt(data, 1)) return OkStatus();
  return FailedPreconditionError(
      "{}: its shared memory object was truncated while the daemon had it mapped; release "
      "it and register (or create) it again",
      what);
}

// Weights scale expert outputs in Combine (routing_errors.h); the cuda backend checks them in
// its routing kernel.
Status CheckFiniteWeights(const TensorView& weights, int num_tokens, int top_k) {
  const auto* w = static_cast<const float*>(weights.data);
  if (w == nullptr) return OkStatus();
  for (int t = 0; t < num_tokens; ++t) {
    for (int k = 0; k < top_k; ++k) {
      const float value = w[static_cast<size_t>(t) * top_k + k];
      if (!std::isfinite(value)) return NonFiniteWeightError(t, k, value);
    }
  }
  return OkStatus();
}

class CpuHandle;

// A group's ranks meet in its rendezvous, each on its own lane: the group's stream of that
// rank, made with the rank's first handle and retired with the group (lane_registry.h).
class CpuGroup : public BackendGroup {
 public:
  CpuGroup(const GroupConfig& config, std::function<void(CpuGroup*)> forget,
           std::vector<std::unique_ptr<GlooRankLink>> links = {})
      : config_(config),
        rendezvous_(config.name, config.world_size()),
        links_(std::move(links)),
        lanes_(config.world_size(), nullptr),
        forget_(std::move(forget)) {}
  ~CpuGroup() override { forget_(this); }
  const GroupConfig& config() const override { return config_; }
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
    if (config.spans_nodes) {
      EPD_ASSIGN_OR_RETURN(links, transport_.LinksFor(config));
    }
    auto group = std::make_unique<CpuGroup>(config, [this](CpuGroup* g) { ForgetGroup(g); },
                                            std::move(links));
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
    cpu.lane().Enqueue(
        [this, node_rank, counter, value] { return WaitCounter(node_rank, counter, value); });
    return OkStatus();
  }

  Status SignalFence(BackendHandle& handle, ExportedMemory& fence, uint64_t value) override {
    auto& cpu = static_cast<CpuHandle&>(handle);
    const int node_rank = cpu.node_rank();
    uint64_t* counter = Counter(fence);
    void* page = fence.data();
    cpu.lane().Enqueue([node_rank, counter, value, page] {
      std::atomic_ref<uint64_t>(*counter).store(value, std::memory_order_release);
      return CheckIntact(page, fmt::format("rank {}: fence", node_rank));
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
      Status bound = CheckFiniteWeights(args.topk_weights, args.num_tokens, cpu.config().top_k);
      if (bound.ok()) {
        bound = reference::BindRouting(cpu.config(), args.topk_idx.data, args.topk_idx.dtype,
                                 static_cast<const float*>(args.topk_weights.data), args.num_tokens,
                                 cpu.topk_idx(), cpu.topk_weights(), cpu.expert_counts());
      }
      if (bound.ok()) bound = CheckIntact(args.topk_idx.data, "topk_idx");
      if (bound.ok()) bound = CheckIntact(args.topk_weights.data, "topk_weights");
      cpu.set_bound_tokens(bound.ok() ? args.num_tokens : 0);
      cpu.set_routing_status(bound);
      return bound;
    });
    return OkStatus();
  }

  Status Dispatch(BackendHandle& handle, const DispatchArgs& args) override {
    auto& me = static_cast<CpuHandle&>(handle);
    if (Status bad = CheckDispatchInput(me, args); !bad.ok()) {
      Abandon(handle, CollectiveKind::kDispatch, bad);
      return bad;
    }
    if (me.config().spans_nodes) {
      me.lane().Enqueue([this, &me, x = args.x.data, x_scales = args.x_scales.data] {
        return RunSpanningDispatch(me, x, x_scales, OkStatus());
      });
      return OkStatus();
    }
    const uint64_t seq = me.group().rendezvous().TakeSequence(me.group_rank());
    me.lane().Enqueue(
        [this, &me, seq, x = args.x.data, x_scales = args.x_scales.data] {
          return RunDispatch(me, seq, RankPart{&me, x, x_scales});
        });
    return OkStatus();
  }

  Status Combine(BackendHandle& handle, const CombineArgs& args) override {
    auto& me = static_cast<CpuHandle&>(handle);
    if (Status bad = CheckTokenRows(me, args.out, "combine", "out"); !bad.ok()) {
      Abandon(handle, CollectiveKind::kCombine, bad);
      return bad;
    }
    const void* expert_out = args.expert_out != nullptr
                                 ? args.expert_out
                                 : static_cast<const void*>(me.receive().recv_x);
    if (me.config().spans_nodes) {
      me.lane().Enqueue([this, &me, expert_out, out = args.out.data] {
        return RunSpanningCombine(me, expert_out, out, OkStatus());
      });
      return OkStatus();
    }
    const uint64_t seq = me.group().rendezvous().TakeSequence(me.group_rank());
    me.lane().Enqueue([this, &me, seq, expert_out, out = args.out.data] {
      return RunCombine(me, seq, RankPart{&me, expert_out}, out);
    });
    return OkStatus();
  }

  void Abandon(BackendHandle& handle, CollectiveKind kind, const Status& reason) override {
    auto& me = static_cast<CpuHandle&>(handle);
    if (me.config().spans_nodes) {
      // The peers in other daemons learn it from this rank's counts (the op still runs).
      me.lane().Enqueue([this, &me, kind, reason] {
        if (kind == CollectiveKind::kDispatch) {
          RunSpanningDispatch(me, nullptr, nullptr, reason).IgnoreError();
        } else {
          RunSpanningCombine(me, nullptr, nullptr, reason).IgnoreError();
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
  // The core checks tensors before ops reach a backend; callers that drive the backend
  // directly (tests) get the same protection against a short or mistyped tensor.
  static Status CheckTokenRows(const CpuHandle& me, const TensorView& t, std::string_view op,
                               std::string_view field) {
    return CheckRows(me, t, op, field, me.config().dtype, me.config().hidden);
  }
  static Status CheckRows(const CpuHandle& me, const TensorView& t, std::string_view op,
                          std::string_view field, DType dtype, int64_t columns) {
    const GroupConfig& c = me.config();
    const int n = me.num_tokens();
    if (t.dtype != dtype || t.shape.size() != 2 || t.shape[0] < n || t.shape[1] != columns ||
        (n > 0 && t.data == nullptr)) {
      return InvalidArgumentError("{} of group '{}': {} must be {} [>= {}, {}]", op, c.name, field,
                                  DTypeName(dtype), n, columns);
    }
    return OkStatus();
  }
  // Dispatch's x: token rows, or with fp8 dispatch pre-quantized e4m3 rows with x_scales.
  static Status CheckDispatchInput(const CpuHandle& me, const DispatchArgs& args) {
    const GroupConfig& c = me.config();
    if (args.x_scales.data == nullptr) return CheckTokenRows(me, args.x, "dispatch", "x");
    if (!c.fp8_dispatch()) {
      return InvalidArgumentError("dispatch of group '{}': x_scales is set, but the group "
                                  "dispatches {}",
                                  c.name, DTypeName(c.dtype));
    }
    EPD_RETURN_IF_ERROR(CheckRows(me, args.x, "dispatch", "x", DType::kFp8E4m3, c.hidden));
    return CheckRows(me, args.x_scales, "dispatch", "x_scales", c.scale_dtype(), c.scale_blocks());
  }

  Status WaitCounter(int node_rank, uint64_t* counter_word, uint64_t value) {
    std::atomic_ref<uint64_t> counter(*counter_word);
    const Deadline deadline = Clock::now() + options_.op_timeout;
    auto pause = std::chrono::microseconds(1);
    while (counter.load(std::memory_order_acquire) < value) {
      // A truncated page reads zeros for ever: fail now rather than at the timeout.
      EPD_RETURN_IF_ERROR(CheckIntact(counter_word, fmt::format("rank {}: fence", node_rank)));
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

  // What a rank shows its peers for one op: the handle it runs the op on (a rank may hold one
  // per layer) and its tensor (dispatch: x; combine: its expert output).
  struct RankPart {
    CpuHandle* handle;
    const void* tensor;
    const void* scales = nullptr;  // dispatch of pre-quantized fp8 x: its x_scales
  };
  static const RankPart& PartOf(const void* part) { return *static_cast<const RankPart*>(part); }

  // On the rank's stream: meet the peers, fill this rank's receive buffers, wait until no peer
  // still reads this rank's tokens.
  // A collective on routing whose binding failed on the stream: the peers fail at once too.
  static Status AbandonIfRoutingFailed(CpuHandle& me, uint64_t seq, CollectiveKind kind) {
    if (me.routing_status().ok()) return OkStatus();
    Status failed =
        FailedPreconditionError("the last UpdateHandle failed: {}", me.routing_status().message());
    me.group().rendezvous().Abandon(me.group_rank(), seq, kind, failed);
    return failed;
  }

  Status RunDispatch(CpuHandle& me, uint64_t seq, const RankPart& mine) {
    EPD_RETURN_IF_ERROR(AbandonIfRoutingFailed(me, seq, CollectiveKind::kDispatch));
    CpuGroup& group = me.group();
    const GroupConfig& config = group.config();
    EPD_ASSIGN_OR_RETURN(std::vector<const void*> parts,
                         group.rendezvous().Arrive(me.group_rank(), seq, CollectiveKind::kDispatch,
                                                   &mine, options_.op_timeout));
    std::vector<reference::SourceRank> sources;
    for (const void* part : parts) {
      sources.push_back(PartOf(part).handle->Source(PartOf(part).tensor));
      sources.back().x_scales = PartOf(part).scales;
    }
    // Every rank sees the same counts, so every rank reports the same overflow.
    Status status = reference::CheckCapacity(config, sources);
    if (status.ok()) {
      reference::DispatchReceive(config, me.group_rank(), sources, me.receive());
      reference::ComputeSlots(config, me.group_rank(), sources, me.slots());
    }
    Status left = group.rendezvous().Leave(me.group_rank(), seq, options_.op_timeout);
    if (status.ok()) status = left;
    // Every rank read every rank's x: a truncated one spoils all ranks' results.
    for (size_t s = 0; s < parts.size() && status.ok(); ++s) {
      status = CheckIntact(PartOf(parts[s]).tensor, fmt::format("dispatch: group rank {}'s x", s));
    }
    if (status.ok()) status = CheckIntact(me.exported().data(), "dispatch: the handle");
    return status;
  }

  // Spanning groups (spanning_ops.h): this rank exchanges with every group rank through its
  // link; `abandon` non-OK gives the op up and fails it on the peers.
  Status RunSpanningDispatch(CpuHandle& me, const void* x, const void* x_scales, Status abandon) {
    if (abandon.ok() && !me.routing_status().ok()) {
      abandon =
          FailedPreconditionError("the last UpdateHandle failed: {}", me.routing_status().message());
    }
    reference::SourceRank mine = me.Source(x);
    mine.x_scales = x_scales;
    Status status = spanning::Dispatch(me.group().link(me.group_rank()), me.config(),
                                       me.group_rank(), mine, abandon, me.receive(), me.slots(),
                                       &me.return_rows(), options_.op_timeout);
    if (status.ok()) status = CheckIntact(x, "dispatch: x");
    if (status.ok()) status = CheckIntact(me.exported().data(), "dispatch: the handle");
    return status;
  }

  Status RunSpanningCombine(CpuHandle& me, const void* expert_out, void* out, Status abandon) {
    if (abandon.ok() && !me.routing_status().ok()) {
      abandon =
          FailedPreconditionError("the last UpdateHandle failed: {}", me.routing_status().message());
    }
    Status status = spanning::Combine(me.group().link(me.group_rank()), me.config(),
                                      me.group_rank(), me.Source(nullptr), abandon, me.slots(),
                                      me.return_rows(), expert_out, out, options_.op_timeout);
    if (status.ok()) status = CheckIntact(expert_out, "combine: expert outputs");
    if (status.ok()) status = CheckIntact(out, "combine: out");
    return status;
  }

  Status RunCombine(CpuHandle& me, uint64_t seq, const RankPart& mine, void* out) {
    EPD_RETURN_IF_ERROR(AbandonIfRoutingFailed(me, seq, CollectiveKind::kCombine));
    CpuGroup& group = me.group();
    EPD_ASSIGN_OR_RETURN(std::vector<const void*> parts,
                         group.rendezvous().Arrive(me.group_rank(), seq, CollectiveKind::kCombine,
                                                   &mine, options_.op_timeout));
    std::vector<const void*> expert_out;
    for (const void* part : parts) expert_out.push_back(PartOf(part).tensor);
    reference::Combine(group.config(), me.Source(nullptr), me.slots(), expert_out, out);
    Status status = group.rendezvous().Leave(me.group_rank(), seq, options_.op_timeout);
    for (size_t s = 0; s < expert_out.size() && status.ok(); ++s) {
      status = CheckIntact(expert_out[s], fmt::format("combine: group rank {}'s expert outputs", s));
    }
    if (status.ok()) status = CheckIntact(out, "combine: out");
    return status;
  }

 public:
 private:
  static uint64_t* Counter(ExportedMemory& fence) {
    return reinterpret_cast<uint64_t*>(static_cast<char*>(fence.data()) + kFenceCounterOffset);
  }
  // The salt keeps names unique when a pid is reused after a killed daemon left objects behind.
  std::string NextShmName(std::string_view kind) {
    return fmt::format("/epd-{}-{:08x}-{}-{}", getpid(), shm_salt_, kind, next_shm_.fetch_add(1));
  }

  CpuBackendOptions options_;
  SpanningTransport transport_{options_.cluster, options_.restarted_node};
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
