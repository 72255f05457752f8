#include "daemon/core/engine.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include <unistd.h>

#include "daemon/core/buffer_registry.h"
#include "daemon/core/collective_matcher.h"
#include "daemon/core/data_plane.h"
#include "common/fence_page.h"
#include "daemon/core/log.h"
#include "daemon/core/rank_worker.h"

namespace epd {
namespace {

struct Group {
  GroupConfig config;
  bool persistent = false;
  SessionId owner = 0;    // 0 when persistent or when the owning session ended
  bool orphaned = false;  // owner ended while handles remained: erase with the last handle
  int handles = 0;        // guarded by the engine mutex
  std::unique_ptr<BackendGroup> backend;
  std::unique_ptr<CollectiveMatcher> matcher;
  std::unique_ptr<GroupDataPlane> data_plane;  // set at the first AttachDataPlane; engine mutex
};

// What the latest executed op of one kind ended with, including a device error that
// Complete() reports after the op was answered.
struct OpOutcome {
  uint64_t op = 0;  // the handle's op number; 0: never ran
  Status status;
};

struct Handle {
  std::string name;
  bool persistent = false;
  std::shared_ptr<Group> group;
  int node_rank = 0;
  int group_rank = 0;
  std::unique_ptr<BackendHandle> backend;
  SessionId attached_to = 0;  // session using it; guarded by the engine mutex
  int submitted_tokens = 0;   // n of the last accepted UpdateHandle; engine mutex
  bool bound = false;         // an UpdateHandle was accepted; engine mutex

  // Ops check these so that nothing runs on routing or slots that failed: a dispatch needs
  // the latest update to have succeeded, a combine needs a successful dispatch after it.
  uint64_t executed_ops = 0;  // rank worker only
  std::mutex outcome_mutex;
  OpOutcome routing, dispatch;  // guarded by outcome_mutex

  uint64_t BeginOp() { return ++executed_ops; }
  void Record(OpOutcome& outcome, uint64_t op, const Status& status) {
    std::lock_guard lock(outcome_mutex);
    outcome = OpOutcome{op, status};
  }
  // A late device error only counts while no newer op of that kind replaced the outcome.
  void RecordDeviceError(OpOutcome& outcome, uint64_t op, const Status& status) {
    std::lock_guard lock(outcome_mutex);
    if (outcome.op == op && outcome.status.ok()) outcome.status = status;
  }
  Status CheckReadyFor(CollectiveKind kind) {
    std::lock_guard lock(outcome_mutex);
    if (!routing.status.ok()) {
      return FailedPreconditionError("the last UpdateHandle failed: {}", routing.status.message());
    }
    if (kind == CollectiveKind::kDispatch) return OkStatus();
    if (dispatch.op == 0 || dispatch.op < routing.op) {
      return FailedPreconditionError(
          "no Dispatch ran on this handle since its last UpdateHandle: dispatch before combine");
    }
    if (!dispatch.status.ok()) {
      return FailedPreconditionError("the last Dispatch failed: {}", dispatch.status.message());
    }
    return OkStatus();
  }
};

struct Fence {
  std::unique_ptr<ExportedMemory> page;
};

struct Session {
  SessionId id = 0;
  int rank = 0;
  std::string client_name;
  bool unary = false;
  Clock::time_point last_used;
  std::atomic<bool> closed{false};
  ObjectId next_id = 1;
  BufferRegistry buffers;
  std::map<ObjectId, std::shared_ptr<Fence>> fences;
  std::map<ObjectId, ObjectId> fence_buffers;  // fence id -> its page's buffer id
  std::map<ObjectId, std::shared_ptr<Handle>> handles;
  std::map<ObjectId, ObjectId> handle_buffers;  // handle id -> exported region's buffer id
};

// Memory views that keep their owner alive (aliasing shared_ptr).
template <typename Owner>
std::shared_ptr<Memory> MemoryOf(const std::shared_ptr<Owner>& owner, Memory& memory) {
  return std::shared_ptr<Memory>(owner, &memory);
}

std::string PersistentKey(std::string_view name, int node_rank) {
  return fmt::format("{}@{}", name, node_rank);
}

}  // namespace

// Objects whose last reference may free device memory. Freeing (cudaFree, closing an IPC
// mapping) can wait for the whole GPU, e.g. behind a spinning fence wait, so it must never
// happen under the engine lock: callers collect them here and drop them after unlocking.
using Released = std::vector<std::shared_ptr<const void>>;

// A frontend-launched rank whose frontend ended: its group's device sync state is reset once
// the engine lock is released (ResetDataPlane synchronises with the device).
struct LaunchRelease {
  std::shared_ptr<Group> group;
  int group_rank = 0;
};

class Engine::Impl {
 public:
  Impl(std::unique_ptr<Backend> backend, EngineOptions options)
      : backend_(std::move(backend)), options_(options), rng_(std::random_device{}()) {
    for (int r = 0; r < backend_->num_ranks(); ++r) {
      workers_.push_back(std::make_unique<RankWorker>(r));
    }
    reaper_ = std::thread([this] { ReapIdleSessions(); });
  }

  ~Impl() {
    Shutdown();
    {
      std::lock_guard lock(mutex_);
      stop_reaper_ = true;
    }
    reaper_changed_.notify_all();
    reaper_.join();
    workers_.clear();  // runs what is still queued (cancelled ops), then joins
    std::lock_guard lock(mutex_);
    persistent_handles_.clear();
    groups_.clear();
  }

  Backend& backend() { return *backend_; }

  // ---------------------------------------------------------------- sessions

  StatusOr<SessionInfo> OpenSession(int rank, std::string client_name, bool unary) {
    if (rank < 0 || rank >= backend_->num_ranks()) {
      return InvalidArgumentError("rank = {} is outside the node's ranks [0, {})", rank,
                                  backend_->num_ranks());
    }
    std::lock_guard lock(mutex_);
    if (draining_) return UnavailableError("epd is shutting down");
    auto session = std::make_shared<Session>();
    do {
      session->id = rng_();
    } while (session->id == 0 || sessions_.count(session->id) != 0);
    session->rank = rank;
    session->client_name = std::move(client_name);
    session->unary = unary;
    session->last_used = Clock::now();
    sessions_[session->id] = session;
    ++sessions_total_;
    EPD_LOG(kCore, info, "session {:016x} opened for rank {} by '{}'{}", session->id, rank,
            session->client_name, unary ? " (unary)" : "");
    return SessionInfo{session->id, rank, session->client_name};
  }

  Status CloseSession(SessionId id, std::string_view reason) {
    std::shared_ptr<Session> session;
    std::vector<std::shared_ptr<Group>> groups_to_abort;
    std::vector<LaunchRelease> launches;
    Released released;  // destroyed after the lock below
    {
      std::lock_guard lock(mutex_);
      auto it = sessions_.find(id);
      if (it == sessions_.end()) return NotFoundError("session {:016x} is not open", id);
      session = it->second;
      sessions_.erase(it);
      session->closed = true;
      std::set<Group*> seen;
      for (auto& [handle_id, handle] : session->handles) {
        if (seen.insert(handle->group.get()).second) {
          groups_to_abort.push_back(handle->group);
          ReleaseLaunchesLocked(id, handle->group, launches);
        }
        DetachLocked(*handle, released);
      }
      for (auto git = groups_.begin(); git != groups_.end();) {
        Group& group = *git->second;
        if (group.owner == id && !group.persistent) {
          group.owner = 0;
          if (group.handles == 0) {
            EPD_LOG(kCore, info, "group '{}' destroyed with its session", group.config.name);
            released.push_back(git->second);
            git = groups_.erase(git);
            continue;
          }
          group.orphaned = true;
        }
        ++git;
      }
    }
    // Ranks waiting for this session's rank in a collective fail now instead of timing out.
    const Status abort =
        UnavailableError("rank {}'s session {:016x} ended ({}) while the group waited for it",
                         session->rank, id, reason);
    for (auto& group : groups_to_abort) group->matcher->Abort(abort);
    ResetLaunchedGroups(launches, reason);
    EPD_LOG(kCore, info,
            "session {:016x} (rank {}) closed: {}; releasing {} handles, {} buffers, "
            "{} fences",
            id, session->rank, reason, session->handles.size(), session->buffers.size(),
            session->fences.size());
    // In-flight ops hold their own references: memory is freed once they drain.
    session->handles.clear();
    session->buffers.Clear();
    session->fences.clear();
    return OkStatus();
  }

  Status Touch(SessionId id) {
    std::lock_guard lock(mutex_);
    return FindSessionLocked(id).status();
  }

  // ---------------------------------------------------------------- buffers and fences

  StatusOr<BufferInfo> RegisterBuffer(SessionId id, const MemorySource& source) {
    int rank;
    {
      std::lock_guard lock(mutex_);
      EPD_ASSIGN_OR_RETURN(Session * session, FindSessionLocked(id));
      rank = session->rank;
    }
    if (source.size == 0) return InvalidArgumentError("source.size must be > 0");
    // Opening can take a millisecond (IPC): done outside the engine lock.
    EPD_ASSIGN_OR_RETURN(std::shared_ptr<Memory> memory, backend_->Import(source, rank));
    std::lock_guard lock(mutex_);
    EPD_ASSIGN_OR_RETURN(Session * session, FindSessionLocked(id));
    const ObjectId buffer_id = session->next_id++;
    session->buffers.Add(buffer_id, memory);
    return BufferInfo{buffer_id, memory->size(), memory->device()};
  }

  Status ReleaseBuffer(SessionId id, ObjectId buffer) {
    Released released;  // destroyed after the lock below
    std::lock_guard lock(mutex_);
    EPD_ASSIGN_OR_RETURN(Session * session, FindSessionLocked(id));
    for (const auto& [fence_id, fence_buffer] : session->fence_buffers) {
      if (fence_buffer == buffer) {
        return FailedPreconditionError("buffer_id = {} is fence {}'s page: use DestroyFence",
                                       buffer, fence_id);
      }
    }
    for (const auto& [handle_id, handle_buffer] : session->handle_buffers) {
      if (handle_buffer == buffer) {
        return FailedPreconditionError(
            "buffer_id = {} is handle {}'s exported region: use DestroyHandle", buffer, handle_id);
      }
    }
    EPD_ASSIGN_OR_RETURN(std::shared_ptr<Memory> memory, session->buffers.Take(buffer));
    released.push_back(std::move(memory));
    return OkStatus();
  }

  StatusOr<FenceInfo> CreateFence(SessionId id) {
    int rank;
    {
      std::lock_guard lock(mutex_);
      EPD_ASSIGN_OR_RETURN(Session * session, FindSessionLocked(id));
      rank = session->rank;
    }
    auto fence = std::make_shared<Fence>();
    EPD_ASSIGN_OR_RETURN(fence->page, backend_->CreateFence(rank));
    std::lock_guard lock(mutex_);
    EPD_ASSIGN_OR_RETURN(Session * session, FindSessionLocked(id));
    FenceInfo info;
    info.id = session->next_id++;
    info.buffer_id = session->next_id++;
    info.source = fence->page->Describe();
    info.counter_offset = kFenceCounterOffset;
    session->buffers.Add(info.buffer_id, MemoryOf(fence, *fence->page));
    session->fences[info.id] = fence;
    session->fence_buffers[info.id] = info.buffer_id;
    return info;
  }

  Status DestroyFence(SessionId id, ObjectId fence) {
    Released released;  // destroyed after the lock below
    std::lock_guard lock(mutex_);
    EPD_ASSIGN_OR_RETURN(Session * session, FindSessionLocked(id));
    auto it = session->fences.find(fence);
    if (it == session->fences.end()) {
      return NotFoundError("fence_id = {} is not a fence of this session", fence);
    }
    released.push_back(std::move(it->second));
    session->fences.erase(it);
    session->buffers.Remove(session->fence_buffers[fence]).IgnoreError();
    session->fence_buffers.erase(fence);
    return OkStatus();
  }

  // ---------------------------------------------------------------- groups

  Status CreateGroup(std::optional<SessionId> owner, const GroupConfig& config, bool persistent) {
    EPD_RETURN_IF_ERROR(config.Validate(backend_->num_ranks()));
    {
      std::unique_lock lock(mutex_);
      if (owner.has_value()) EPD_RETURN_IF_ERROR(FindSessionLocked(*owner).status());
      // Every rank's frontend may create the same group at once: the first builds it (an
      // NCCL communicator takes about a second), the others wait for it and share it.
      const bool built = groups_changed_.wait_for(
          lock, backend_->op_timeout(), [&] { return creating_.count(config.name) == 0; });
      if (!built) {
        return DeadlineExceededError("group '{}' is still being created by another session",
                                     config.name);
      }
      if (auto it = groups_.find(config.name); it != groups_.end()) {
        if (it->second->config.SameShape(config)) return OkStatus();  // idempotent
        return AlreadyExistsError("group '{}' exists with a different configuration: {}",
                                  config.name, it->second->config.ToString());
      }
      creating_.insert(config.name);
    }
    auto group = std::make_shared<Group>();
    group->config = config;
    group->persistent = persistent;
    group->owner = persistent || !owner.has_value() ? 0 : *owner;
    group->matcher = std::make_unique<CollectiveMatcher>(config.name, config.world_size());
    StatusOr<std::unique_ptr<BackendGroup>> backend_group = backend_->CreateGroup(config);
    std::lock_guard lock(mutex_);
    creating_.erase(config.name);
    groups_changed_.notify_all();
    if (!backend_group.ok()) return backend_group.status();
    group->backend = std::move(backend_group).value();
    groups_[config.name] = group;
    EPD_LOG(kCore, info, "created {}{}", config.ToString(), persistent ? " (persistent)" : "");
    return OkStatus();
  }

  std::vector<GroupSummary> ListGroups() const {
    std::lock_guard lock(mutex_);
    std::vector<GroupSummary> out;
    for (const auto& [name, group] : groups_) {
      out.push_back(GroupSummary{group->config, group->persistent, group->handles});
    }
    return out;
  }

  Status DestroyGroup(SessionId id, std::string_view name) {
    Released released;  // destroyed after the lock below
    std::lock_guard lock(mutex_);
    EPD_RETURN_IF_ERROR(FindSessionLocked(id).status());
    auto it = groups_.find(std::string(name));
    if (it == groups_.end()) return NotFoundError("group '{}' does not exist", name);
    if (it->second->handles > 0) {
      return FailedPreconditionError("group '{}' still has {} handles", name, it->second->handles);
    }
    released.push_back(std::move(it->second));
    groups_.erase(it);
    return OkStatus();
  }

  // ---------------------------------------------------------------- handles

  StatusOr<HandleInfo> CreateHandle(SessionId id, std::string_view group_name, int rank,
                                    std::string_view name, bool persistent) {
    std::shared_ptr<Group> group;
    int node_rank;
    {
      std::lock_guard lock(mutex_);
      EPD_ASSIGN_OR_RETURN(Session * session, FindSessionLocked(id));
      node_rank = session->rank;
      if (rank >= 0 && rank != node_rank) {
        return PermissionDeniedError("rank = {} does not match the session's rank {}", rank,
                                     node_rank);
      }
      EPD_ASSIGN_OR_RETURN(group, FindGroupLocked(group_name));
      if (persistent && name.empty()) {
        return InvalidArgumentError("name must be set for a persistent handle");
      }
      if (!name.empty() && persistent_handles_.count(PersistentKey(name, node_rank)) != 0) {
        return AlreadyExistsError("handle '{}' of rank {} already exists: use AttachHandle", name,
                                  node_rank);
      }
    }
    EPD_ASSIGN_OR_RETURN(std::shared_ptr<Handle> handle,
                         NewHandle(group, node_rank, name, persistent));
    std::lock_guard lock(mutex_);
    EPD_ASSIGN_OR_RETURN(Session * session, FindSessionLocked(id));
    if (persistent) {
      auto [it, inserted] = persistent_handles_.emplace(PersistentKey(name, node_rank), handle);
      if (!inserted) return AlreadyExistsError("handle '{}' was created concurrently", name);
    }
    return AttachLocked(*session, handle);
  }

  Status CreatePersistentHandle(std::string_view group_name, int node_rank, std::string_view name) {
    std::shared_ptr<Group> group;
    {
      std::lock_guard lock(mutex_);
      EPD_ASSIGN_OR_RETURN(group, FindGroupLocked(group_name));
      if (persistent_handles_.count(PersistentKey(name, node_rank)) != 0) {
        return AlreadyExistsError("handle '{}' of rank {} already exists", name, node_rank);
      }
    }
    EPD_ASSIGN_OR_RETURN(std::shared_ptr<Handle> handle,
                         NewHandle(group, node_rank, name, /*persistent=*/true));
    std::lock_guard lock(mutex_);
    persistent_handles_.emplace(PersistentKey(name, node_rank), handle);
    return OkStatus();
  }

  StatusOr<HandleInfo> AttachHandle(SessionId id, std::string_view name) {
    std::lock_guard lock(mutex_);
    EPD_ASSIGN_OR_RETURN(Session * session, FindSessionLocked(id));
    auto it = persistent_handles_.find(PersistentKey(name, session->rank));
    if (it == persistent_handles_.end()) {
      return NotFoundError("no persistent handle '{}' for rank {}", name, session->rank);
    }
    const std::shared_ptr<Handle>& handle = it->second;
    if (handle->attached_to != 0 && handle->attached_to != id) {
      return FailedPreconditionError("handle '{}' of rank {} is attached to session {:016x}", name,
                                     session->rank, handle->attached_to);
    }
    for (const auto& [handle_id, attached] : session->handles) {
      if (attached == handle) return DescribeHandle(handle_id, *session, *handle);
    }
    return AttachLocked(*session, handle);
  }

  Status DestroyHandle(SessionId id, ObjectId handle_id) {
    std::vector<LaunchRelease> launches;
    {
      Released released;  // destroyed after the lock below
      std::lock_guard lock(mutex_);
      EPD_RETURN_IF_ERROR(DestroyHandleLocked(id, handle_id, released, launches));
    }
    ResetLaunchedGroups(launches, "its handle was destroyed");
    return OkStatus();
  }

  Status DestroyHandleLocked(SessionId id, ObjectId handle_id, Released& released,
                             std::vector<LaunchRelease>& launches) {
    EPD_ASSIGN_OR_RETURN(Session * session, FindSessionLocked(id));
    auto it = session->handles.find(handle_id);
    if (it == session->handles.end()) {
      return NotFoundError("handle_id = {} is not a handle of this session", handle_id);
    }
    std::shared_ptr<Handle> handle = it->second;
    ReleaseLaunchesLocked(id, handle->group, launches);
    released.push_back(handle);
    DetachLocked(*handle, released);
    if (handle->persistent) {
      persistent_handles_.erase(PersistentKey(handle->name, handle->node_rank));
      LeaveGroupLocked(*handle, released);
    }
    session->buffers.Remove(session->handle_buffers[handle_id]).IgnoreError();
    session->handle_buffers.erase(handle_id);
    session->handles.erase(it);
    return OkStatus();
  }

  // ---------------------------------------------------------------- ops

  Status SubmitUpdate(SessionId id, const UpdateRequest& request, const OpOptions& options,
                      OpDone done) {
    std::lock_guard lock(mutex_);
    EPD_ASSIGN_OR_RETURN(OpContext ctx,
                         PrepareOpLocked(id, request.handle_id, request.rank, options));
    const GroupConfig& config = ctx.handle->group->config;
    UpdateArgs args;
    EPD_ASSIGN_OR_RETURN(args.topk_idx, ctx.session->buffers.Resolve(request.topk_idx, "topk_idx"));
    if (args.topk_idx.dtype != DType::kInt32 && args.topk_idx.dtype != DType::kInt64) {
      return InvalidArgumentError("topk_idx.dtype = {} must be int32 or int64",
                                  DTypeName(args.topk_idx.dtype));
    }
    EPD_RETURN_IF_ERROR(ExpectShape(args.topk_idx, "topk_idx", {-1, config.top_k}, {"n", "top_k"}));
    const int64_t n = args.topk_idx.rows();
    if (n > config.max_tokens_per_rank) {
      return InvalidArgumentError("topk_idx.shape[0] = {} exceeds max_tokens_per_rank = {}", n,
                                  config.max_tokens_per_rank);
    }
    if (request.topk_weights.has_value()) {
      EPD_ASSIGN_OR_RETURN(args.topk_weights,
                           ctx.session->buffers.Resolve(*request.topk_weights, "topk_weights"));
      EPD_RETURN_IF_ERROR(ExpectDType(args.topk_weights, "topk_weights", DType::kFp32));
      EPD_RETURN_IF_ERROR(
          ExpectShape(args.topk_weights, "topk_weights", {n, config.top_k}, {"n", "top_k"}));
    }
    args.num_tokens = static_cast<int>(n);
    ctx.handle->submitted_tokens = args.num_tokens;
    ctx.handle->bound = true;
    return PostLocked(ctx, OpKind::kUpdate, std::move(done), [this, args](OpContext& c) {
      Handle& handle = *c.handle;
      const uint64_t op = handle.BeginOp();
      Status status = backend_->UpdateHandle(*handle.backend, args);
      handle.Record(handle.routing, op, status);
      std::shared_ptr<Handle> keep = c.handle;
      c.on_device_error = [keep, op](const Status& error) {
        keep->RecordDeviceError(keep->routing, op, error);
      };
      return status;
    });
  }

  Status SubmitDispatch(SessionId id, const DispatchRequest& request, const OpOptions& options,
                        OpDone done) {
    std::lock_guard lock(mutex_);
    EPD_ASSIGN_OR_RETURN(OpContext ctx,
                         PrepareOpLocked(id, request.handle_id, request.rank, options));
    EPD_ASSIGN_OR_RETURN(auto payload,
                         NewPayloadLocked(ctx, request.handle_id, CollectiveKind::kDispatch));
    payload->dispatch.handle = ctx.handle->backend.get();
    EPD_ASSIGN_OR_RETURN(payload->dispatch.x,
                         ResolveTokenRowsLocked(ctx, request.x, "x", *payload));
    return PostCollectiveLocked(ctx, OpKind::kDispatch, std::move(payload), std::move(done));
  }

  Status SubmitCombine(SessionId id, const CombineRequest& request, const OpOptions& options,
                       OpDone done) {
    std::lock_guard lock(mutex_);
    EPD_ASSIGN_OR_RETURN(OpContext ctx,
                         PrepareOpLocked(id, request.handle_id, request.rank, options));
    const GroupConfig& config = ctx.handle->group->config;
    EPD_ASSIGN_OR_RETURN(auto payload,
                         NewPayloadLocked(ctx, request.handle_id, CollectiveKind::kCombine));
    payload->combine.handle = ctx.handle->backend.get();
    const HandleLayout& layout = ctx.handle->backend->layout();
    if (request.expert_out.has_value()) {
      EPD_ASSIGN_OR_RETURN(TensorView expert_out,
                           ctx.session->buffers.Resolve(*request.expert_out, "expert_out"));
      EPD_RETURN_IF_ERROR(ExpectDType(expert_out, "expert_out", config.dtype));
      EPD_RETURN_IF_ERROR(ExpectShape(expert_out, "expert_out",
                                      {static_cast<int64_t>(layout.recv_rows), config.hidden},
                                      {"recv_rows", "hidden"}));
      payload->combine.expert_out = expert_out.data;
      payload->keepalive.push_back(ctx.session->buffers.Find(request.expert_out->buffer_id));
    } else {
      payload->combine.expert_out =
          static_cast<char*>(ctx.handle->backend->exported().data()) + layout.recv_x_offset;
    }
    EPD_ASSIGN_OR_RETURN(payload->combine.out,
                         ResolveTokenRowsLocked(ctx, request.out, "out", *payload));
    return PostCollectiveLocked(ctx, OpKind::kCombine, std::move(payload), std::move(done));
  }

  // ---------------------------------------------------------------- stats and shutdown

  EngineStats Stats() const {
    std::lock_guard lock(mutex_);
    EngineStats stats = stats_;
    stats.sessions_open = sessions_.size();
    stats.sessions_total = sessions_total_;
    stats.allocations = backend_->allocations().allocations();
    stats.frees = backend_->allocations().frees();
    stats.live_bytes = backend_->allocations().live_bytes();
    return stats;
  }

  void Shutdown() {
    std::vector<SessionId> open;
    {
      std::unique_lock lock(mutex_);
      if (shut_down_) return;
      draining_ = true;
      bool drained =
          ops_idle_.wait_for(lock, options_.drain_timeout, [this] { return in_flight_ == 0; });
      if (!drained) {
        EPD_LOG(kCore, warn, "shutdown: {} ops still in flight after {} ms; cancelling them",
                in_flight_, options_.drain_timeout.count());
        // Wake everything that waits on the host so the workers can finish.
        backend_->BeginShutdown();
        const Status stopping = UnavailableError("epd is shutting down");
        for (const auto& [name, group] : groups_) group->matcher->Abort(stopping);
        drained =
            ops_idle_.wait_for(lock, std::chrono::seconds(2), [this] { return in_flight_ == 0; });
        if (!drained) EPD_LOG(kCore, error, "shutdown: {} ops did not stop", in_flight_);
      }
      shut_down_ = true;
      for (const auto& [id, session] : sessions_) open.push_back(id);
    }
    for (SessionId id : open) CloseSession(id, "daemon shutting down").IgnoreError();
  }

 private:
  enum class OpKind { kUpdate, kDispatch, kCombine };

  struct OpContext {
    std::shared_ptr<Session> session;
    std::shared_ptr<Handle> handle;
    std::shared_ptr<Fence> wait_fence, signal_fence;
    OpOptions options;
    std::function<void(const Status&)> on_device_error;  // set by the op body when it cares
  };

  // A collective needs routing bound to its handle first.
  StatusOr<std::shared_ptr<CollectivePayload>> NewPayloadLocked(const OpContext& ctx,
                                                                ObjectId handle_id,
                                                                CollectiveKind kind) {
    if (!ctx.handle->bound) {
      return FailedPreconditionError("handle_id = {} has no routing: call UpdateHandle first",
                                     handle_id);
    }
    auto payload = std::make_shared<CollectivePayload>();
    payload->kind = kind;
    return payload;
  }

  // Resolves a [tokens bound by the last update, hidden] tensor of the group's dtype and keeps
  // its buffer alive for the op.
  StatusOr<TensorView> ResolveTokenRowsLocked(const OpContext& ctx, const TensorRef& ref,
                                              std::string_view field, CollectivePayload& payload) {
    const GroupConfig& config = ctx.handle->group->config;
    EPD_ASSIGN_OR_RETURN(TensorView view, ctx.session->buffers.Resolve(ref, field));
    EPD_RETURN_IF_ERROR(ExpectDType(view, field, config.dtype));
    EPD_RETURN_IF_ERROR(ExpectShape(view, field, {ctx.handle->submitted_tokens, config.hidden},
                                    {"tokens bound by the last UpdateHandle", "hidden"}));
    payload.keepalive.push_back(ctx.session->buffers.Find(ref.buffer_id));
    return view;
  }

  StatusOr<Session*> FindSessionLocked(SessionId id) {
    auto it = sessions_.find(id);
    if (it == sessions_.end()) {
      return NotFoundError("session_id = {:016x} is not an open session", id);
    }
    it->second->last_used = Clock::now();
    return it->second.get();
  }

  StatusOr<std::shared_ptr<Group>> FindGroupLocked(std::string_view name) {
    auto it = groups_.find(std::string(name));
    if (it == groups_.end()) return NotFoundError("group '{}' does not exist", name);
    return it->second;
  }

  StatusOr<std::shared_ptr<Handle>> NewHandle(const std::shared_ptr<Group>& group, int node_rank,
                                              std::string_view name, bool persistent) {
    const int group_rank = group->config.GroupRankOf(node_rank);
    if (group_rank < 0) {
      return InvalidArgumentError("rank {} is not a member of group '{}' (ranks {})", node_rank,
                                  group->config.name, fmt::join(group->config.ranks, ", "));
    }
    auto handle = std::make_shared<Handle>();
    handle->name = std::string(name);
    handle->persistent = persistent;
    handle->group = group;
    handle->node_rank = node_rank;
    handle->group_rank = group_rank;
    EPD_ASSIGN_OR_RETURN(handle->backend, backend_->CreateHandle(*group->backend, group_rank));
    std::lock_guard lock(mutex_);
    ++group->handles;
    EPD_LOG(kCore, info, "group '{}' rank {}: handle '{}' created ({} bytes){}", group->config.name,
            node_rank, name, handle->backend->layout().total_bytes(),
            persistent ? " (persistent)" : "");
    return handle;
  }

  StatusOr<HandleInfo> AttachLocked(Session& session, const std::shared_ptr<Handle>& handle) {
    const ObjectId handle_id = session.next_id++;
    const ObjectId buffer_id = session.next_id++;
    session.handles[handle_id] = handle;
    session.handle_buffers[handle_id] = buffer_id;
    session.buffers.Add(buffer_id, MemoryOf(handle, handle->backend->exported()));
    handle->attached_to = session.id;
    return DescribeHandle(handle_id, session, *handle);
  }

  // Called when a handle leaves a session: persistent ones stay, others die with their refs.
  void DetachLocked(Handle& handle, Released& released) {
    handle.attached_to = 0;
    if (!handle.persistent) LeaveGroupLocked(handle, released);
  }

  // The handle no longer counts in its group; an orphaned group goes with its last handle.
  void LeaveGroupLocked(Handle& handle, Released& released) {
    Group& group = *handle.group;
    if (--group.handles == 0 && group.orphaned) {
      EPD_LOG(kCore, info, "group '{}' destroyed with its last handle", group.config.name);
      released.push_back(handle.group);
      groups_.erase(group.config.name);
    }
  }

  // ---------------------------------------------------------------- frontend-launched ops
 public:
  StatusOr<DataPlaneInfo> AttachDataPlane(SessionId id, ObjectId handle_id, uint64_t reset_epoch) {
    if (reset_epoch != 0) EPD_RETURN_IF_ERROR(RestartEpoch(id, handle_id, reset_epoch));
    return AttachDataPlaneOnce(id, handle_id);
  }

 private:
  // A frontend's collective of `reset_epoch` failed (a peer timed out): the ranks' op counts may
  // differ now, so all restart numbering together in a new epoch. Once per epoch: the other
  // ranks asking for the same epoch find it already left.
  Status RestartEpoch(SessionId id, ObjectId handle_id, uint64_t reset_epoch) {
    std::shared_ptr<Group> group;
    {
      std::lock_guard lock(mutex_);
      EPD_ASSIGN_OR_RETURN(Session * session, FindSessionLocked(id));
      auto it = session->handles.find(handle_id);
      if (it == session->handles.end()) {
        return NotFoundError("handle_id = {} is not a handle of this session", handle_id);
      }
      group = it->second->group;
      if (group->data_plane == nullptr) {
        return FailedPreconditionError("reset_epoch = {}: group '{}' has no data plane yet",
                                       reset_epoch, group->config.name);
      }
      const uint64_t current = group->data_plane->epoch();
      if (reset_epoch > current) {
        return InvalidArgumentError("reset_epoch = {} is newer than group '{}''s epoch {}",
                                    reset_epoch, group->config.name, current);
      }
      if (reset_epoch < current) return OkStatus();
    }
    EPD_ASSIGN_OR_RETURN(uint64_t base,
                         backend_->ResetDataPlane(*group->backend, /*dead_group_rank=*/-1));
    std::lock_guard lock(mutex_);
    if (group->data_plane->epoch() == reset_epoch) {
      group->data_plane->BeginEpoch(base);
      EPD_LOG(kCore, warn, "group '{}': epoch {} failed on a frontend; epoch {} starts at op {}",
              group->config.name, reset_epoch, group->data_plane->epoch(), base + 1);
    }
    return OkStatus();
  }

  StatusOr<DataPlaneInfo> AttachDataPlaneOnce(SessionId id, ObjectId handle_id) {
    std::shared_ptr<Handle> me;
    std::vector<std::shared_ptr<Handle>> members;
    bool first = false;
    {
      std::lock_guard lock(mutex_);
      EPD_ASSIGN_OR_RETURN(Session * session, FindSessionLocked(id));
      auto it = session->handles.find(handle_id);
      if (it == session->handles.end()) {
        return NotFoundError("handle_id = {} is not a handle of this session", handle_id);
      }
      me = it->second;
      EPD_ASSIGN_OR_RETURN(members, GroupMembersLocked(*me->group));
      first = me->group->data_plane == nullptr;
    }
    Group& group = *me->group;
    DataPlaneInfo info;
    info.handle_id = handle_id;
    info.group_rank = me->group_rank;
    info.config = group.config;
    info.layout = me->backend->layout();
    info.timeout_ns = static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(backend_->op_timeout()).count());
    // IPC handle queries and the first reset talk to the device: outside the engine lock.
    for (const auto& member : members) {
      EPD_ASSIGN_OR_RETURN(DataPlaneExport exported,
                           backend_->ExportDataPlane(*group.backend, *member->backend));
      info.peers.push_back(DataPlanePeer{member->group_rank, member->node_rank,
                                         member->backend->exported().Describe(),
                                         exported.sync_area});
      if (member == me) {
        info.private_region = exported.private_region;
        info.private_offsets = exported.private_offsets;
        info.sync_area_bytes = exported.sync_area_bytes;
        info.max_blocks = exported.max_blocks;
      }
    }
    uint64_t base = 0;
    if (first) {
      EPD_ASSIGN_OR_RETURN(base, backend_->ResetDataPlane(*group.backend, /*dead_group_rank=*/-1));
    }
    std::lock_guard lock(mutex_);
    EPD_ASSIGN_OR_RETURN(Session * session, FindSessionLocked(id));
    if (session->handles.count(handle_id) == 0) {
      return NotFoundError("handle_id = {} was destroyed while attaching", handle_id);
    }
    if (group.data_plane == nullptr) {
      if (!first) return InternalError("group '{}' lost its data plane", group.config.name);
      EPD_ASSIGN_OR_RETURN(
          group.data_plane,
          GroupDataPlane::Create(fmt::format("/epd-{}-{:08x}-group-{}", getpid(),
                                             static_cast<uint32_t>(rng_()), ++state_pages_),
                                 base));
    }
    EPD_RETURN_IF_ERROR(group.data_plane->Attach(me->group_rank, id));
    info.state_page = group.data_plane->state_page();
    info.epoch = group.data_plane->epoch();
    info.sequence_base = group.data_plane->sequence_base();
    EPD_LOG(kCore, info, "group '{}' rank {}: frontend-launched by session {:016x} (epoch {})",
            group.config.name, me->group_rank, id, info.epoch);
    return info;
  }

  // Every group rank's handle, by group rank; FAILED_PRECONDITION naming the first missing.
  StatusOr<std::vector<std::shared_ptr<Handle>>> GroupMembersLocked(const Group& group) const {
    std::vector<std::shared_ptr<Handle>> members(group.config.world_size());
    auto consider = [&](const std::shared_ptr<Handle>& handle) {
      if (handle->group.get() == &group) members[handle->group_rank] = handle;
    };
    for (const auto& [key, handle] : persistent_handles_) consider(handle);
    for (const auto& [sid, session] : sessions_) {
      for (const auto& [hid, handle] : session->handles) consider(handle);
    }
    for (int r = 0; r < group.config.world_size(); ++r) {
      if (members[r] == nullptr) {
        return FailedPreconditionError(
            "group '{}': group rank {} (node rank {}) has no handle yet; a frontend-launched "
            "rank maps every peer's buffers, so attach once every rank created its handle",
            group.config.name, r, group.config.ranks[r]);
      }
    }
    return members;
  }

  void ReleaseLaunchesLocked(SessionId id, const std::shared_ptr<Group>& group,
                             std::vector<LaunchRelease>& out) {
    if (group->data_plane == nullptr) return;
    for (int rank : group->data_plane->Release(id)) out.push_back(LaunchRelease{group, rank});
  }

  // A frontend-launched rank's frontend ended, maybe mid-op: clear its sync state and start a
  // new epoch, so the survivors' pending op times out with an error naming the rank and their
  // next op (numbered in the new epoch) meets a fresh frontend of the rank.
  void ResetLaunchedGroups(const std::vector<LaunchRelease>& launches, std::string_view reason) {
    for (const LaunchRelease& launch : launches) {
      const std::string& name = launch.group->config.name;
      StatusOr<uint64_t> base = backend_->ResetDataPlane(*launch.group->backend, launch.group_rank);
      if (!base.ok()) {
        EPD_LOG(kCore, error, "group '{}': resetting after rank {}'s frontend ended failed: {}",
                name, launch.group_rank, base.status().ToString());
        continue;
      }
      std::lock_guard lock(mutex_);
      launch.group->data_plane->BeginEpoch(*base);
      EPD_LOG(kCore, warn,
              "group '{}': rank {}'s frontend ended ({}); device sync state reset, epoch {} "
              "starts at op {}",
              name, launch.group_rank, reason, launch.group->data_plane->epoch(), *base + 1);
    }
  }

  HandleInfo DescribeHandle(ObjectId handle_id, const Session& session, Handle& handle) const {
    HandleInfo info;
    info.id = handle_id;
    info.name = handle.name;
    info.group = handle.group->config.name;
    info.group_rank = handle.group_rank;
    info.persistent = handle.persistent;
    info.buffer_id = session.handle_buffers.at(handle_id);
    info.source = handle.backend->exported().Describe();
    info.layout = handle.backend->layout();
    info.config = handle.group->config;
    return info;
  }

  StatusOr<OpContext> PrepareOpLocked(SessionId id, ObjectId handle_id, int rank,
                                      const OpOptions& options) {
    if (draining_) return UnavailableError("epd is shutting down");
    auto sit = sessions_.find(id);
    if (sit == sessions_.end()) {
      return NotFoundError("session_id = {:016x} is not an open session", id);
    }
    OpContext ctx;
    ctx.session = sit->second;
    ctx.session->last_used = Clock::now();
    if (rank >= 0 && rank != ctx.session->rank) {
      return PermissionDeniedError("rank = {} does not match the session's rank {}", rank,
                                   ctx.session->rank);
    }
    auto hit = ctx.session->handles.find(handle_id);
    if (hit == ctx.session->handles.end()) {
      return NotFoundError("handle_id = {} is not a handle of this session", handle_id);
    }
    ctx.handle = hit->second;
    if (const auto& plane = ctx.handle->group->data_plane; plane && plane->any_launched()) {
      return FailedPreconditionError(
          "group '{}' is frontend-launched: its frontends launch update, dispatch and combine "
          "themselves (AttachDataPlane); the daemon runs none of its ops",
          ctx.handle->group->config.name);
    }
    ctx.options = options;
    auto find_fence = [&](const std::optional<FenceOp>& op, std::string_view field,
                          std::shared_ptr<Fence>* out) -> Status {
      if (!op.has_value()) return OkStatus();
      auto fit = ctx.session->fences.find(op->fence_id);
      if (fit == ctx.session->fences.end()) {
        return NotFoundError("{}.fence_id = {} is not a fence of this session", field,
                             op->fence_id);
      }
      *out = fit->second;
      return OkStatus();
    };
    EPD_RETURN_IF_ERROR(find_fence(options.wait, "options.wait", &ctx.wait_fence));
    EPD_RETURN_IF_ERROR(find_fence(options.signal, "options.signal", &ctx.signal_fence));
    return ctx;
  }

  OpCounters& CountersFor(OpKind kind) {
    switch (kind) {
      case OpKind::kUpdate:
        return stats_.update;
      case OpKind::kDispatch:
        return stats_.dispatch;
      case OpKind::kCombine:
        return stats_.combine;
    }
    return stats_.update;
  }

  // Wraps `done` so that it is called once, after stats and the in-flight count are updated.
  OpDone FinishOnce(OpKind kind, OpDone done) {
    const Clock::time_point start = Clock::now();
    return [this, kind, start, done = std::move(done)](Status status) {
      const auto us = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start);
      if (!status.ok()) {
        EPD_LOG(kCore, debug, "op failed: {}", status.ToString());
      }
      {
        std::lock_guard lock(mutex_);
        OpCounters& counters = CountersFor(kind);
        (status.ok() ? counters.completed : counters.failed) += 1;
        counters.total_us += us.count();
      }
      done(std::move(status));
    };
  }

  // What a worker runs for one op: it must call `finish` once and then `release`.
  using WorkerTask = std::function<void(OpContext&, OpDone finish, std::function<void()> release)>;

  // Queues `task` on the session rank's worker, counting the op as in flight until released.
  // An op whose session ended before it ran is cancelled there.
  Status EnqueueLocked(OpContext ctx, OpKind kind, OpDone done, WorkerTask task) {
    ++in_flight_;
    OpDone finish = FinishOnce(kind, std::move(done));
    std::function<void()> release = [this] {
      std::lock_guard lock(mutex_);
      if (--in_flight_ == 0) ops_idle_.notify_all();
    };
    const int rank = ctx.session->rank;
    const bool posted = workers_[rank]->Post([ctx, finish, release, task]() mutable {
      if (ctx.session->closed) {
        finish(CancelledError("session {:016x} ended before the op ran", ctx.session->id));
        release();
        return;
      }
      task(ctx, std::move(finish), std::move(release));
    });
    if (!posted) {
      --in_flight_;
      return UnavailableError("epd is shutting down");
    }
    return OkStatus();
  }

  // A rank-local op: `body` runs after the wait fence and returns what it enqueued.
  Status PostLocked(OpContext ctx, OpKind kind, OpDone done,
                    std::function<Status(OpContext&)> body) {
    return EnqueueLocked(std::move(ctx), kind, std::move(done),
                         [this, body](OpContext& c, OpDone finish, std::function<void()> release) {
                           Status status = WaitFenceIfAny(c);
                           if (status.ok()) status = body(c);
                           CompleteOp(c, std::move(status), nullptr, std::move(finish),
                                      std::move(release));
                         });
  }

  // A collective: after the wait fence, it is matched with the other ranks' op and run.
  Status PostCollectiveLocked(OpContext ctx, OpKind kind,
                              std::shared_ptr<CollectivePayload> payload, OpDone done) {
    payload->keepalive.push_back(ctx.handle);
    return EnqueueLocked(
        std::move(ctx), kind, std::move(done),
        [this, payload](OpContext& c, OpDone finish, std::function<void()> release) {
          RunCollectiveOp(c, payload, std::move(finish), std::move(release));
        });
  }

  void RunCollectiveOp(OpContext& ctx, const std::shared_ptr<CollectivePayload>& payload,
                       OpDone finish, std::function<void()> release) {
    Handle& handle = *ctx.handle;
    Group& group = *handle.group;
    const uint64_t op = handle.BeginOp();
    payload->status = WaitFenceIfAny(ctx);
    if (payload->status.ok()) payload->status = handle.CheckReadyFor(payload->kind);
    const Deadline deadline = Clock::now() + backend_->op_timeout();
    StatusOr<MatchedCollective> matched =
        group.matcher->Arrive(handle.group_rank, payload, deadline);
    Status status =
        matched.ok() ? RunCollective(group, handle.group_rank, *matched) : matched.status();
    if (payload->kind == CollectiveKind::kDispatch) {
      handle.Record(handle.dispatch, op, status);
      std::shared_ptr<Handle> keep_handle = ctx.handle;
      ctx.on_device_error = [keep_handle, op](const Status& error) {
        keep_handle->RecordDeviceError(keep_handle->dispatch, op, error);
      };
    }
    std::shared_ptr<MatchedCollective> keep;
    if (matched.ok()) keep = std::make_shared<MatchedCollective>(std::move(matched).value());
    CompleteOp(ctx, std::move(status), std::move(keep), std::move(finish), std::move(release));
  }

  Status RunCollective(Group& group, int group_rank, const MatchedCollective& matched) {
    for (size_t r = 0; r < matched.size(); ++r) {
      if (!matched[r]->status.ok()) {
        return Status(
            matched[r]->status.code(),
            fmt::format("group '{}' {}: group rank {}: {}", group.config.name,
                        CollectiveKindName(matched[r]->kind), r, matched[r]->status.message()));
      }
    }
    if (matched[group_rank]->kind == CollectiveKind::kDispatch) {
      std::vector<DispatchArgs> all;
      for (const auto& p : matched) all.push_back(p->dispatch);
      return backend_->Dispatch(*group.backend, group_rank, all);
    }
    std::vector<CombineArgs> all;
    for (const auto& p : matched) all.push_back(p->combine);
    return backend_->Combine(*group.backend, group_rank, all);
  }

  Status WaitFenceIfAny(OpContext& ctx) {
    if (!ctx.options.wait.has_value()) return OkStatus();
    return backend_->WaitFence(ctx.session->rank, *ctx.wait_fence->page, ctx.options.wait->value);
  }

  // Signals, then reports: immediately for fenced ops, after device completion for blocking
  // ones. Device-side errors of non-blocking ops are logged and fail the next op on the handle.
  void CompleteOp(OpContext& ctx, Status status, std::shared_ptr<MatchedCollective> keep,
                  OpDone finish, std::function<void()> release) {
    if (status.ok() && ctx.options.signal.has_value()) {
      status = backend_->SignalFence(ctx.session->rank, *ctx.signal_fence->page,
                                     ctx.options.signal->value);
    }
    if (!status.ok()) {
      finish(std::move(status));
      release();
      return;
    }
    if (!ctx.options.blocking) finish(OkStatus());
    const bool blocking = ctx.options.blocking;
    std::shared_ptr<Handle> handle = ctx.handle;
    auto on_device_error = std::move(ctx.on_device_error);
    backend_->Complete(*handle->backend,
                       [handle, keep, blocking, finish, release, on_device_error](Status done) {
                         if (!done.ok() && on_device_error) on_device_error(done);
                         if (blocking) {
                           finish(std::move(done));
                         } else if (!done.ok()) {
                           EPD_LOG(kCore, error, "group '{}' rank {}: asynchronous op failed: {}",
                                   handle->group->config.name, handle->node_rank, done.ToString());
                         }
                         release();
                       });
  }

  void ReapIdleSessions() {
    std::unique_lock lock(mutex_);
    while (!stop_reaper_) {
      reaper_changed_.wait_for(lock, std::chrono::milliseconds(500));
      std::vector<SessionId> idle;
      const Clock::time_point now = Clock::now();
      for (const auto& [id, session] : sessions_) {
        if (session->unary && now - session->last_used > options_.unary_session_idle_timeout) {
          idle.push_back(id);
        }
      }
      lock.unlock();
      for (SessionId id : idle) CloseSession(id, "idle timeout").IgnoreError();
      lock.lock();
    }
  }

  std::unique_ptr<Backend> backend_;
  const EngineOptions options_;
  std::vector<std::unique_ptr<RankWorker>> workers_;

  mutable std::mutex mutex_;
  std::condition_variable ops_idle_;
  std::condition_variable reaper_changed_;
  std::mt19937_64 rng_;
  uint64_t state_pages_ = 0;  // group state pages made, for their names
  std::map<SessionId, std::shared_ptr<Session>> sessions_;
  std::map<std::string, std::shared_ptr<Group>> groups_;
  std::set<std::string> creating_;  // group names whose backend group is being built
  std::condition_variable groups_changed_;
  std::map<std::string, std::shared_ptr<Handle>> persistent_handles_;
  uint64_t sessions_total_ = 0;
  uint64_t in_flight_ = 0;
  bool draining_ = false;
  bool shut_down_ = false;
  bool stop_reaper_ = false;
  EngineStats stats_;
  std::thread reaper_;
};

// ------------------------------------------------------------------ Engine

StatusOr<std::unique_ptr<Engine>> Engine::Create(std::unique_ptr<Backend> backend,
                                                 EngineOptions options) {
  if (backend == nullptr) return InvalidArgumentError("backend must not be null");
  if (backend->num_ranks() <= 0) return InvalidArgumentError("the backend has no ranks");
  return std::unique_ptr<Engine>(new Engine(std::make_unique<Impl>(std::move(backend), options)));
}

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::~Engine() = default;

NodeDescription Engine::DescribeNode() const { return impl_->backend().Describe(); }
int Engine::num_ranks() const { return impl_->backend().num_ranks(); }
EngineStats Engine::Stats() const { return impl_->Stats(); }
AllocationCounter& Engine::allocations() { return impl_->backend().allocations(); }

StatusOr<SessionInfo> Engine::OpenSession(int rank, std::string client_name, bool unary) {
  return impl_->OpenSession(rank, std::move(client_name), unary);
}
Status Engine::CloseSession(SessionId session, std::string_view reason) {
  return impl_->CloseSession(session, reason);
}
Status Engine::Touch(SessionId session) { return impl_->Touch(session); }
StatusOr<BufferInfo> Engine::RegisterBuffer(SessionId session, const MemorySource& source) {
  return impl_->RegisterBuffer(session, source);
}
Status Engine::ReleaseBuffer(SessionId session, ObjectId buffer) {
  return impl_->ReleaseBuffer(session, buffer);
}
StatusOr<FenceInfo> Engine::CreateFence(SessionId session) { return impl_->CreateFence(session); }
Status Engine::DestroyFence(SessionId session, ObjectId fence) {
  return impl_->DestroyFence(session, fence);
}
Status Engine::CreateGroup(std::optional<SessionId> session, const GroupConfig& config,
                           bool persistent) {
  return impl_->CreateGroup(session, config, persistent);
}
std::vector<GroupSummary> Engine::ListGroups() const { return impl_->ListGroups(); }
Status Engine::DestroyGroup(SessionId session, std::string_view name) {
  return impl_->DestroyGroup(session, name);
}
StatusOr<HandleInfo> Engine::CreateHandle(SessionId session, std::string_view group, int rank,
                                          std::string_view name, bool persistent) {
  return impl_->CreateHandle(session, group, rank, name, persistent);
}
Status Engine::CreatePersistentHandle(std::string_view group, int node_rank,
                                      std::string_view name) {
  return impl_->CreatePersistentHandle(group, node_rank, name);
}
StatusOr<DataPlaneInfo> Engine::AttachDataPlane(SessionId session, ObjectId handle,
                                                uint64_t reset_epoch) {
  return impl_->AttachDataPlane(session, handle, reset_epoch);
}

StatusOr<HandleInfo> Engine::AttachHandle(SessionId session, std::string_view name) {
  return impl_->AttachHandle(session, name);
}
Status Engine::DestroyHandle(SessionId session, ObjectId handle) {
  return impl_->DestroyHandle(session, handle);
}
Status Engine::SubmitUpdate(SessionId session, const UpdateRequest& request,
                            const OpOptions& options, OpDone done) {
  return impl_->SubmitUpdate(session, request, options, std::move(done));
}
Status Engine::SubmitDispatch(SessionId session, const DispatchRequest& request,
                              const OpOptions& options, OpDone done) {
  return impl_->SubmitDispatch(session, request, options, std::move(done));
}
Status Engine::SubmitCombine(SessionId session, const CombineRequest& request,
                             const OpOptions& options, OpDone done) {
  return impl_->SubmitCombine(session, request, options, std::move(done));
}
void Engine::Shutdown() { impl_->Shutdown(); }

}  // namespace epd
