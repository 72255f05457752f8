// Engine: the public API over Engine::Impl. Asynchronous control calls post their work to
// the control worker; the synchronous forms wait for that with a bound.
#include "daemon/core/engine.h"

#include <future>

#include "daemon/core/engine_impl.h"

namespace epd {
namespace {

// How long a synchronous control call waits for the control worker. Generous: the worker
// may be freeing memory behind a device wait that is itself bounded by the op timeout.
constexpr auto kSyncCallLimit = std::chrono::minutes(2);

// Starts an asynchronous call and waits for its result.
template <typename Result>
Result Await(const std::function<void(std::function<void(Result)>)>& start) {
  auto promise = std::make_shared<std::promise<Result>>();
  std::future<Result> future = promise->get_future();
  start([promise](Result result) { promise->set_value(std::move(result)); });
  if (future.wait_for(kSyncCallLimit) != std::future_status::ready) {
    return Result(DeadlineExceededError("the engine's control worker did not answer within {} s",
                                        kSyncCallLimit.count() * 60));
  }
  return future.get();
}

// Frees `released` on the control worker, then reports `status`.
void ReleaseThenReport(ControlWorker& control, Released released, Status status,
                       StatusCallback done) {
  control.Post([released = std::move(released), status = std::move(status),
                done = std::move(done)]() mutable {
    released.clear();
    if (done) done(std::move(status));
  });
}

}  // namespace

StatusOr<std::unique_ptr<Engine>> Engine::Create(std::unique_ptr<Backend> backend,
                                                 EngineOptions options) {
  if (backend == nullptr) return InvalidArgumentError("backend must not be null");
  if (backend->num_ranks() <= 0) return InvalidArgumentError("the backend has no ranks");
  return std::unique_ptr<Engine>(
      new Engine(std::make_unique<Impl>(std::move(backend), std::move(options))));
}

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::~Engine() = default;

NodeDescription Engine::DescribeNode() const {
  NodeDescription node = impl_->backend().Describe();
  if (impl_->cluster() != nullptr) node.cluster = impl_->cluster()->View();
  return node;
}
int Engine::num_ranks() const { return impl_->backend().num_ranks(); }
EngineStats Engine::Stats() const { return impl_->Stats(); }
AllocationCounter& Engine::allocations() { return impl_->backend().allocations(); }

// ------------------------------------------------------------------ sessions

StatusOr<SessionInfo> Engine::OpenSession(int rank, std::string client_name, bool unary,
                                          SessionPeer peer) {
  return impl_->OpenSession(rank, std::move(client_name), unary, peer);
}

void Engine::CloseSession(SessionId session, std::string_view reason, StatusCallback done) {
  Released released;
  Status status = impl_->CloseSession(session, reason, released);
  ReleaseThenReport(impl_->control(), std::move(released), std::move(status), std::move(done));
}

Status Engine::CloseSession(SessionId session, std::string_view reason) {
  return Await<Status>([&](StatusCallback done) { CloseSession(session, reason, done); });
}

Status Engine::Touch(SessionId session) { return impl_->Touch(session); }
Status Engine::Touch(SessionId session, const SessionPeer& caller, SessionSecret secret) {
  return impl_->Touch(session, caller, secret);
}
std::vector<SessionSummary> Engine::ListSessions() const { return impl_->ListSessions(); }
Status Engine::CheckLiveness(std::chrono::milliseconds limit) const {
  return impl_->CheckLiveness(limit);
}

// ------------------------------------------------------------------ buffers and fences

void Engine::RegisterBuffer(SessionId session, const MemorySource& source,
                            ResultCallback<BufferInfo> done) {
  impl_->control().Post([impl = impl_.get(), session, source, done = std::move(done)] {
    done(impl->RegisterBuffer(session, source));
  });
}

StatusOr<BufferInfo> Engine::RegisterBuffer(SessionId session, const MemorySource& source) {
  return Await<StatusOr<BufferInfo>>(
      [&](ResultCallback<BufferInfo> done) { RegisterBuffer(session, source, done); });
}

void Engine::ReleaseBuffer(SessionId session, ObjectId buffer, StatusCallback done) {
  Released released;
  Status status = impl_->ReleaseBuffer(session, buffer, released);
  ReleaseThenReport(impl_->control(), std::move(released), std::move(status), std::move(done));
}

Status Engine::ReleaseBuffer(SessionId session, ObjectId buffer) {
  return Await<Status>([&](StatusCallback done) { ReleaseBuffer(session, buffer, done); });
}

void Engine::CreateFence(SessionId session, ResultCallback<FenceInfo> done) {
  impl_->control().Post(
      [impl = impl_.get(), session, done = std::move(done)] { done(impl->CreateFence(session)); });
}

StatusOr<FenceInfo> Engine::CreateFence(SessionId session) {
  return Await<StatusOr<FenceInfo>>(
      [&](ResultCallback<FenceInfo> done) { CreateFence(session, done); });
}

void Engine::DestroyFence(SessionId session, ObjectId fence, StatusCallback done) {
  Released released;
  Status status = impl_->DestroyFence(session, fence, released);
  ReleaseThenReport(impl_->control(), std::move(released), std::move(status), std::move(done));
}

Status Engine::DestroyFence(SessionId session, ObjectId fence) {
  return Await<Status>([&](StatusCallback done) { DestroyFence(session, fence, done); });
}

// ------------------------------------------------------------------ groups

void Engine::CreateGroup(std::optional<SessionId> session, const GroupConfig& config,
                         bool persistent, ResultCallback<GroupConfig> done) {
  impl_->control().Post([impl = impl_.get(), session, config, persistent,
                         done = std::move(done)] {
    done(impl->CreateGroup(session, config, persistent));
  });
}

Status Engine::CreateGroup(std::optional<SessionId> session, const GroupConfig& config,
                           bool persistent) {
  return Await<StatusOr<GroupConfig>>([&](ResultCallback<GroupConfig> done) {
           CreateGroup(session, config, persistent, done);
         })
      .status();
}

std::vector<GroupSummary> Engine::ListGroups() const { return impl_->ListGroups(); }

void Engine::DestroyGroup(SessionId session, std::string_view name, StatusCallback done) {
  // The registry hands the group to the control worker; reporting after it keeps the order.
  ReleaseThenReport(impl_->control(), {}, impl_->DestroyGroup(session, name), std::move(done));
}

Status Engine::DestroyGroup(SessionId session, std::string_view name) {
  return Await<Status>([&](StatusCallback done) { DestroyGroup(session, name, done); });
}

// ------------------------------------------------------------------ handles

void Engine::CreateHandle(SessionId session, std::string_view group, int rank,
                          std::string_view name, bool persistent,
                          ResultCallback<HandleInfo> done) {
  impl_->control().Post([impl = impl_.get(), session, group = std::string(group), rank,
                         name = std::string(name), persistent, done = std::move(done)] {
    done(impl->CreateHandle(session, group, rank, name, persistent));
  });
}

StatusOr<HandleInfo> Engine::CreateHandle(SessionId session, std::string_view group, int rank,
                                          std::string_view name, bool persistent) {
  return Await<StatusOr<HandleInfo>>([&](ResultCallback<HandleInfo> done) {
    CreateHandle(session, group, rank, name, persistent, done);
  });
}

Status Engine::CreatePersistentHandle(std::string_view group, int node_rank,
                                      std::string_view name) {
  return Await<Status>([&](StatusCallback done) {
    impl_->control().Post([impl = impl_.get(), group = std::string(group), node_rank,
                           name = std::string(name), done] {
      done(impl->CreatePersistentHandle(group, node_rank, name));
    });
  });
}

StatusOr<HandleInfo> Engine::AttachHandle(SessionId session, std::string_view name) {
  return impl_->AttachHandle(session, name);
}

void Engine::DestroyHandle(SessionId session, ObjectId handle, StatusCallback done) {
  Released released;
  Status status = impl_->DestroyHandle(session, handle, released);
  ReleaseThenReport(impl_->control(), std::move(released), std::move(status), std::move(done));
}

Status Engine::DestroyHandle(SessionId session, ObjectId handle) {
  return Await<Status>([&](StatusCallback done) { DestroyHandle(session, handle, done); });
}

// ------------------------------------------------------------------ frontend-launched ops

void Engine::AttachDataPlane(SessionId session, ObjectId handle, uint64_t reset_epoch,
                             ResultCallback<DataPlaneInfo> done) {
  impl_->control().Post([impl = impl_.get(), session, handle, reset_epoch,
                         done = std::move(done)] {
    done(impl->AttachDataPlane(session, handle, reset_epoch));
  });
}

StatusOr<DataPlaneInfo> Engine::AttachDataPlane(SessionId session, ObjectId handle,
                                                uint64_t reset_epoch) {
  return Await<StatusOr<DataPlaneInfo>>([&](ResultCallback<DataPlaneInfo> done) {
    AttachDataPlane(session, handle, reset_epoch, done);
  });
}

// ------------------------------------------------------------------ ops

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
