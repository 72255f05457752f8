// Engine::Impl: construction, sessions, buffers, fences, stats and shutdown.
#include <set>

#include "common/fence_page.h"
#include "daemon/core/engine_impl.h"
#include "daemon/core/log.h"
#include "daemon/core/name_rules.h"
#include "daemon/core/session_identity.h"
#include "daemon/core/op_validation.h"

namespace epd {
namespace {

// Memory views that keep their owner alive (aliasing shared_ptr).
template <typename Owner>
std::shared_ptr<Memory> MemoryOf(const std::shared_ptr<Owner>& owner, Memory& memory) {
  return std::shared_ptr<Memory>(owner, &memory);
}

// How often idle unary sessions are looked for.
constexpr auto kIdleCheckPeriod = std::chrono::milliseconds(500);

}  // namespace

Engine::Impl::Impl(std::unique_ptr<Backend> backend, EngineOptions options)
    : backend_(std::move(backend)),
      options_(std::move(options)),
      control_(std::make_unique<ControlWorker>()) {
  groups_ = GroupRegistry::Create(
      [control = control_.get()](Released released) { control->Release(std::move(released)); });
  pipeline_ = std::make_unique<OpPipeline>(*backend_, backend_->num_ranks(),
                                           options_.limits.ops_in_flight, options_.on_op_finished);
  reaper_ = std::make_unique<IdleReaper>(
      sessions_, options_.unary_session_idle_timeout, kIdleCheckPeriod, [this](SessionId id) {
        Released released;
        if (CloseSession(id, "idle timeout", released).ok()) {
          control_->Release(std::move(released));
        }
      });
}

Engine::Impl::~Impl() {
  Shutdown();
  reaper_.reset();
  pipeline_->JoinWorkers();  // runs what is still queued (cancelled ops), then joins
  control_->Release(persistent_.TakeAll());
  groups_->Clear();
  // From here a handle an op still holds past the drain frees its group where it is dropped.
  groups_->DetachReleaser();
  control_.reset();  // frees everything released so far, then joins
  // The backend's streams run their last completions, which finish and release into the
  // pipeline: it must still be whole while they drain.
  backend_.reset();
  pipeline_.reset();
}

StatusOr<SessionInfo> Engine::Impl::OpenSession(int rank, std::string client_name, bool unary,
                                                SessionPeer peer) {
  EPD_RETURN_IF_ERROR(ValidatePrintableName(client_name, "client_name", kMaxClientNameBytes));
  EPD_RETURN_IF_ERROR(ValidateSessionRank(rank, backend_->num_ranks()));
  EPD_ASSIGN_OR_RETURN(
      std::shared_ptr<Session> session,
      sessions_.Open(rank, std::move(client_name), unary, peer, options_.limits.sessions));
  EPD_LOG(kCore, info, "session {} opened for rank {} by '{}'{}{}", session->id, rank,
          session->client_name, unary ? " (unary)" : "",
          peer.pid >= 0 ? fmt::format(" (pid {}, uid {})", peer.pid, peer.uid) : "");
  return SessionInfo{session->id, session->secret, rank, session->client_name};
}

Status Engine::Impl::CloseSession(SessionId id, std::string_view reason, Released& released) {
  std::shared_ptr<Session> session = sessions_.Remove(id);
  if (session == nullptr) return NotFoundError("session {} is not open", id);
  std::vector<std::shared_ptr<Group>> groups_to_abort;
  std::vector<LaunchRelease> launches;
  size_t handles, buffers, fences;
  {
    std::lock_guard lock(session->mutex);
    std::set<Group*> seen;
    for (auto& [handle_id, handle] : session->handles) {
      if (seen.insert(handle->group.get()).second) {
        groups_to_abort.push_back(handle->group);
        ReleaseLaunchesLocked(id, handle->group, launches);
      }
      DetachLocked(*handle);
      released.push_back(std::move(handle));
    }
    handles = session->handles.size();
    session->handles.clear();
    session->handle_buffers.clear();
    buffers = session->buffers.size();
    for (auto& memory : session->buffers.TakeAll()) released.push_back(std::move(memory));
    fences = session->fences.size();
    for (auto& [fence_id, fence] : session->fences) released.push_back(std::move(fence));
    session->fences.clear();
    session->fence_buffers.clear();
  }
  groups_->ReleaseOwnedBy(id);
  // Ranks waiting for this session's rank in a collective fail now instead of timing out.
  const Status abort =
      UnavailableError("rank {}'s session {} ended ({}) while the group waited for it",
                       session->rank, id, reason);
  for (auto& group : groups_to_abort) backend_->AbortGroup(*group->backend, abort);
  ResetLaunchedGroups(launches, reason);
  // In-flight ops hold their own references: memory is freed once they drain.
  EPD_LOG(kCore, info,
          "session {} (rank {}) closed: {}; releasing {} handles, {} buffers, {} fences", id,
          session->rank, reason, handles, buffers, fences);
  return OkStatus();
}

Status Engine::Impl::Touch(SessionId id) { return sessions_.Find(id).status(); }

Status Engine::Impl::Touch(SessionId id, const SessionPeer& caller, SessionSecret secret) {
  // NOTE: an unknown id may say so: ids are public (ListSessions lists them). Which part of
  // the credential failed may not: one answer for another peer and for a wrong secret.
  EPD_ASSIGN_OR_RETURN(std::shared_ptr<Session> session, sessions_.Find(id));
  if (!HoldsSessionCredential(session->peer, session->secret, caller, secret)) {
    return PermissionDeniedError(
        "session_id = {}: the caller does not hold this session's credential (the process "
        "that opened it, presenting its session_secret in header '{}')",
        id, kSessionSecretHeader);
  }
  return OkStatus();
}

Status Engine::Impl::CheckBufferLimitsLocked(const Session& session, uint64_t bytes) const {
  EPD_RETURN_IF_ERROR(CheckLimit(session.registered_buffers, 1, options_.limits.buffers,
                                 "buffers", "limits.buffers_per_session"));
  return CheckLimit(session.registered_bytes, bytes, options_.limits.mapped_bytes,
                    "registered bytes", "limits.mapped_bytes_per_session");
}

StatusOr<BufferInfo> Engine::Impl::RegisterBuffer(SessionId id, const MemorySource& source) {
  EPD_RETURN_IF_ERROR(ValidateMemorySource(source, "source"));
  EPD_ASSIGN_OR_RETURN(std::shared_ptr<Session> session, sessions_.Find(id));
  {
    std::lock_guard lock(session->mutex);
    EPD_RETURN_IF_ERROR(CheckBufferLimitsLocked(*session, source.size));
  }
  EPD_ASSIGN_OR_RETURN(std::shared_ptr<Memory> memory, backend_->Import(source, session->rank));
  std::lock_guard lock(session->mutex);
  if (session->closed) return NotFoundError("session_id = {} is not an open session", id);
  // Over a limit now: `memory` is dropped here, on the control worker like every release.
  EPD_RETURN_IF_ERROR(CheckBufferLimitsLocked(*session, memory->size()));
  ++session->registered_buffers;
  session->registered_bytes += memory->size();
  const ObjectId buffer_id = session->next_id++;
  session->buffers.Add(buffer_id, memory);
  return BufferInfo{buffer_id, memory->size(), memory->device()};
}

Status Engine::Impl::ReleaseBuffer(SessionId id, ObjectId buffer, Released& released) {
  EPD_ASSIGN_OR_RETURN(std::shared_ptr<Session> session, sessions_.Find(id));
  std::lock_guard lock(session->mutex);
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
  --session->registered_buffers;
  session->registered_bytes -= memory->size();
  released.push_back(std::move(memory));
  return OkStatus();
}

StatusOr<FenceInfo> Engine::Impl::CreateFence(SessionId id) {
  EPD_ASSIGN_OR_RETURN(std::shared_ptr<Session> session, sessions_.Find(id));
  auto fence_limit = [&] {
    return CheckLimit(session->fences.size(), 1, options_.limits.fences, "fences",
                      "limits.fences_per_session");
  };
  {
    std::lock_guard lock(session->mutex);
    EPD_RETURN_IF_ERROR(fence_limit());
  }
  auto fence = std::make_shared<Fence>();
  EPD_ASSIGN_OR_RETURN(fence->page, backend_->CreateFence(session->rank));
  std::lock_guard lock(session->mutex);
  if (session->closed) return NotFoundError("session_id = {} is not an open session", id);
  EPD_RETURN_IF_ERROR(fence_limit());
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

Status Engine::Impl::DestroyFence(SessionId id, ObjectId fence, Released& released) {
  EPD_ASSIGN_OR_RETURN(std::shared_ptr<Session> session, sessions_.Find(id));
  std::lock_guard lock(session->mutex);
  auto it = session->fences.find(fence);
  if (it == session->fences.end()) {
    return NotFoundError("fence_id = {} is not a fence of this session", fence);
  }
  released.push_back(std::move(it->second));
  session->fences.erase(it);
  if (auto page = session->buffers.Take(session->fence_buffers[fence]); page.ok()) {
    released.push_back(std::move(page).value());
  }
  session->fence_buffers.erase(fence);
  return OkStatus();
}

EngineStats Engine::Impl::Stats() const {
  EngineStats stats;
  pipeline_->stats().Load(stats);
  stats.sessions_open = sessions_.open();
  stats.sessions_total = sessions_.total();
  stats.allocations = backend_->allocations().allocations();
  stats.frees = backend_->allocations().frees();
  stats.live_bytes = backend_->allocations().live_bytes();
  stats.handle_bytes_per_rank.assign(backend_->num_ranks(), 0);
  std::set<const Handle*> counted;
  auto count = [&](const std::shared_ptr<Handle>& handle) {
    if (counted.insert(handle.get()).second) {
      stats.handle_bytes_per_rank[handle->node_rank] += handle->backend->exported().size();
    }
  };
  for (const auto& handle : persistent_.All()) count(handle);
  for (const auto& session : sessions_.All()) {
    std::lock_guard lock(session->mutex);
    for (const auto& [handle_id, handle] : session->handles) count(handle);
    stats.registered_buffers += session->buffers.size();
    stats.registered_bytes += session->buffers.bytes();
  }
  return stats;
}

Status Engine::Impl::CheckLiveness(std::chrono::milliseconds limit) const {
  EPD_RETURN_IF_ERROR(pipeline_->CheckLiveness(limit));
  return backend_->CheckLiveness(limit);
}

void Engine::Impl::Shutdown() {
  {
    std::lock_guard lock(shutdown_mutex_);
    if (shut_down_) return;
    shut_down_ = true;
  }
  sessions_.StopOpening();
  if (!pipeline_->StopAndWaitIdle(options_.drain_timeout)) {
    EPD_LOG(kCore, warn, "shutdown: {} ops still in flight after {} ms; cancelling them",
            pipeline_->in_flight(), options_.drain_timeout.count());
    // Release every host and device wait at once (the backends' abort word).
    backend_->BeginShutdown();
    if (!pipeline_->StopAndWaitIdle(std::chrono::seconds(2))) {
      EPD_LOG(kCore, error, "shutdown: {} ops did not stop", pipeline_->in_flight());
    }
  }
  for (SessionId id : sessions_.Ids()) {
    Released released;
    if (CloseSession(id, "daemon shutting down", released).ok()) {
      control_->Release(std::move(released));
    }
  }
}

}  // namespace epd
