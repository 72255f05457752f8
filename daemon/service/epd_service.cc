#include "daemon/service/epd_service.h"

#include <iterator>

#include "common/session_secret.h"
#include "daemon/core/log.h"
#include "daemon/service/convert.h"

namespace epd::service {
namespace {

// Finishes a unary call with `status`; failures are logged at debug (they are the client's
// business and the client sees the message).
grpc::ServerUnaryReactor* Finish(grpc::CallbackServerContext* context, std::string_view method,
                                 const Status& status) {
  if (!status.ok()) EPD_LOG(kRpc, debug, "{}: {}", method, status.ToString());
  auto* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

// A unary call that the engine answers later (op completion or control worker): the reactor
// is finished from that callback, or by EndAllCalls at shutdown, whichever comes first.
class DeferredCall {
 public:
  DeferredCall(PendingUnaryCalls* pending, grpc::CallbackServerContext* context,
               std::string_view method)
      : pending_(pending),
        reactor_(context->DefaultReactor()),
        call_(pending->Add(reactor_)),
        method_(method) {}

  grpc::ServerUnaryReactor* reactor() const { return reactor_; }

  // Finishes with `status`; `fill` writes the response (only when OK and still open).
  void Finish(const Status& status, const std::function<void()>& fill = {}) const {
    if (!status.ok()) EPD_LOG(kRpc, debug, "{}: {}", method_, status.ToString());
    pending_->Finish(call_, ToGrpcStatus(status), fill);
  }

 private:
  PendingUnaryCalls* pending_;
  grpc::ServerUnaryReactor* reactor_;
  PendingUnaryCalls::CallPtr call_;
  std::string_view method_;
};

// A control call whose engine method reports a Status: the reactor finishes from it.
template <typename Start>
grpc::ServerUnaryReactor* Deferred(PendingUnaryCalls* pending,
                                   grpc::CallbackServerContext* context, std::string_view method,
                                   Start start) {
  DeferredCall call(pending, context, method);
  start([call](Status status) { call.Finish(status); });
  return call.reactor();
}

// Submits an op; the reactor is finished by the engine's completion (or by shutdown, if the
// engine still holds the op then), or at once when the request does not translate or validate.
template <typename CoreOp, typename ProtoOp, typename Authorize, typename Submit>
grpc::ServerUnaryReactor* SubmitOp(PendingUnaryCalls* pending,
                                   grpc::CallbackServerContext* context, std::string_view method,
                                   const ProtoOp& request, Authorize authorize, Submit submit) {
  CoreOp op;
  OpOptions options;
  Status status = FromProto(request, &op, &options);
  if (status.ok()) status = authorize(request.session_id());
  if (!status.ok()) return Finish(context, method, status);
  DeferredCall call(pending, context, method);
  status = submit(request.session_id(), op, options, [call](Status done) { call.Finish(done); });
  if (!status.ok()) call.Finish(status);  // `done` will not be called
  return call.reactor();
}

}  // namespace

EpdService::EpdService(Engine* engine, std::string daemon_version, const PeerTable* peers)
    : engine_(engine), daemon_version_(std::move(daemon_version)), peers_(peers) {}

std::optional<PeerCredentials> EpdService::CredentialsOf(
    grpc::CallbackServerContext* context) const {
  if (peers_ == nullptr) return std::nullopt;
  return peers_->Lookup(context->peer());
}

SessionPeer EpdService::CallerOf(grpc::CallbackServerContext* context) const {
  auto credentials = CredentialsOf(context);
  return credentials.has_value() ? credentials->peer : SessionPeer{};
}

Status EpdService::Authorize(grpc::CallbackServerContext* context, SessionId session) const {
  // 0 is never a session's id: NOT_FOUND, with no secret to ask for.
  if (session == 0) return engine_->Touch(session);
  // NOTE: the header is checked before the session is looked up, so a caller without one
  // learns nothing about the session it names.
  const auto& metadata = context->client_metadata();
  const auto [first, last] = metadata.equal_range(
      grpc::string_ref(kSessionSecretHeader.data(), kSessionSecretHeader.size()));
  const auto count = std::distance(first, last);
  if (count != 1) {
    return PermissionDeniedError(
        "session_id = {}: a call naming a session must carry its session_secret (16 hex "
        "digits, from the OpenSession answer) in metadata header '{}'; {}",
        session, kSessionSecretHeader,
        count == 0 ? "the header is missing" : fmt::format("the header appears {} times", count));
  }
  const std::optional<SessionSecret> secret =
      ParseSessionSecret(std::string_view(first->second.data(), first->second.size()));
  if (!secret.has_value()) {
    return PermissionDeniedError(
        "session_id = {}: metadata header '{}' must be the session_secret of the OpenSession "
        "answer, 16 hex digits; got {} characters",
        session, kSessionSecretHeader, first->second.size());
  }
  return engine_->Touch(session, CallerOf(context), *secret);
}

void EpdService::EndAllCalls(const Status& status) {
  streams_.CloseAll(status);
  pending_calls_.FinishAll(ToGrpcStatus(status));
}

grpc::ServerUnaryReactor* EpdService::GetNodeInfo(grpc::CallbackServerContext* context,
                                                  const v1::GetNodeInfoRequest*,
                                                  v1::NodeInfo* response) {
  ToProto(engine_->DescribeNode(), engine_->ListGroups(), daemon_version_, response);
  return Finish(context, "GetNodeInfo", OkStatus());
}

grpc::ServerUnaryReactor* EpdService::GetStats(grpc::CallbackServerContext* context,
                                               const v1::GetStatsRequest*, v1::Stats* response) {
  ToProto(engine_->Stats(), response);
  return Finish(context, "GetStats", OkStatus());
}

grpc::ServerUnaryReactor* EpdService::ListSessions(grpc::CallbackServerContext* context,
                                                   const v1::ListSessionsRequest*,
                                                   v1::ListSessionsResponse* response) {
  const Clock::time_point now = Clock::now();
  for (const SessionSummary& session : engine_->ListSessions()) {
    ToProto(session, now, response->add_sessions());
  }
  return Finish(context, "ListSessions", OkStatus());
}

grpc::ServerBidiReactor<v1::SessionRequest, v1::SessionResponse>* EpdService::Session(
    grpc::CallbackServerContext* context) {
  return new SessionStream(engine_, &streams_, CallerOf(context));  // deletes itself when done
}

grpc::ServerUnaryReactor* EpdService::OpenSession(grpc::CallbackServerContext* context,
                                                  const v1::OpenSessionRequest* request,
                                                  v1::OpenSessionResponse* response) {
  auto info = engine_->OpenSession(request->rank(), request->client_name(), /*unary=*/true,
                                   CallerOf(context));
  if (!info.ok()) return Finish(context, "OpenSession", info.status());
  EPD_LOG(kRpc, debug, "unary session {} opened: rank={} client='{}'", info->id, info->rank,
          info->client_name);
  response->set_session_id(info->id);
  response->set_rank(info->rank);
  response->set_session_secret(FormatSessionSecret(info->secret));
  return Finish(context, "OpenSession", OkStatus());
}

grpc::ServerUnaryReactor* EpdService::CloseSession(grpc::CallbackServerContext* context,
                                                   const v1::CloseSessionRequest* request,
                                                   v1::CloseSessionResponse*) {
  if (Status denied = Authorize(context, request->session_id()); !denied.ok()) {
    return Finish(context, "CloseSession", denied);
  }
  return Deferred(&pending_calls_, context, "CloseSession", [&](StatusCallback done) {
    engine_->CloseSession(request->session_id(), "closed by the client", std::move(done));
  });
}

grpc::ServerUnaryReactor* EpdService::RegisterBuffer(grpc::CallbackServerContext* context,
                                                     const v1::RegisterBufferRequest* request,
                                                     v1::RegisterBufferResponse* response) {
  if (!request->has_source()) {
    return Finish(context, "RegisterBuffer", InvalidArgumentError("source is required"));
  }
  auto source = FromProto(request->source(), "source");
  if (!source.ok()) return Finish(context, "RegisterBuffer", source.status());
  Status touched = Authorize(context, request->session_id());
  if (!touched.ok()) return Finish(context, "RegisterBuffer", touched);
  if (source->kind == MemorySource::Kind::kHostShm) {
    // The daemon opens the object with its own privileges: only for a peer whose credentials
    // the backend can check against the object's owner and mode.
    auto credentials = CredentialsOf(context);
    if (!credentials.has_value()) {
      return Finish(context, "RegisterBuffer",
                    PermissionDeniedError("source.shm_name: shared memory can be registered only "
                                          "over the unix socket (the daemon cannot tell who "
                                          "calls over TCP)"));
    }
    source->requester = MemoryRequester{credentials->peer.uid, {}};
    for (gid_t gid : credentials->groups) source->requester->groups.push_back(gid);
  }
  DeferredCall call(&pending_calls_, context, "RegisterBuffer");
  engine_->RegisterBuffer(request->session_id(), *source,
                          [call, response](StatusOr<BufferInfo> buffer) {
                            call.Finish(buffer.status(),
                                        [&] { response->set_buffer_id(buffer->id); });
                          });
  return call.reactor();
}

grpc::ServerUnaryReactor* EpdService::ReleaseBuffer(grpc::CallbackServerContext* context,
                                                    const v1::ReleaseBufferRequest* request,
                                                    v1::ReleaseBufferResponse*) {
  if (Status denied = Authorize(context, request->session_id()); !denied.ok()) {
    return Finish(context, "ReleaseBuffer", denied);
  }
  return Deferred(&pending_calls_, context, "ReleaseBuffer", [&](StatusCallback done) {
    engine_->ReleaseBuffer(request->session_id(), request->buffer_id(), std::move(done));
  });
}

grpc::ServerUnaryReactor* EpdService::CreateFence(grpc::CallbackServerContext* context,
                                                  const v1::CreateFenceRequest* request,
                                                  v1::CreateFenceResponse* response) {
  Status touched = Authorize(context, request->session_id());
  if (!touched.ok()) return Finish(context, "CreateFence", touched);
  DeferredCall call(&pending_calls_, context, "CreateFence");
  engine_->CreateFence(request->session_id(), [call, response](StatusOr<FenceInfo> fence) {
    call.Finish(fence.status(), [&] {
      response->set_fence_id(fence->id);
      response->set_buffer_id(fence->buffer_id);
      *response->mutable_source() = ToProto(fence->source);
      response->set_counter_offset(fence->counter_offset);
    });
  });
  return call.reactor();
}

grpc::ServerUnaryReactor* EpdService::DestroyFence(grpc::CallbackServerContext* context,
                                                   const v1::DestroyFenceRequest* request,
                                                   v1::DestroyFenceResponse*) {
  if (Status denied = Authorize(context, request->session_id()); !denied.ok()) {
    return Finish(context, "DestroyFence", denied);
  }
  return Deferred(&pending_calls_, context, "DestroyFence", [&](StatusCallback done) {
    engine_->DestroyFence(request->session_id(), request->fence_id(), std::move(done));
  });
}

grpc::ServerUnaryReactor* EpdService::CreateGroup(grpc::CallbackServerContext* context,
                                                  const v1::CreateGroupRequest* request,
                                                  v1::CreateGroupResponse* response) {
  if (!request->has_config()) {
    return Finish(context, "CreateGroup", InvalidArgumentError("config is required"));
  }
  auto config = FromProto(request->config(), "config");
  if (!config.ok()) return Finish(context, "CreateGroup", config.status());
  // A persistent group needs no session; a session-owned one names its owner.
  std::optional<SessionId> owner;
  if (request->session_id() != 0 || !request->persistent()) owner = request->session_id();
  if (owner.has_value()) {
    Status touched = Authorize(context, *owner);
    if (!touched.ok()) return Finish(context, "CreateGroup", touched);
  }
  DeferredCall call(&pending_calls_, context, "CreateGroup");
  // Creating an existing group of the same shape is idempotent: the answer is what exists.
  engine_->CreateGroup(owner, *config, request->persistent(),
                       [call, response](StatusOr<GroupConfig> created) {
                         call.Finish(created.status(),
                                     [&] { *response->mutable_config() = ToProto(*created); });
                       });
  return call.reactor();
}

grpc::ServerUnaryReactor* EpdService::ListGroups(grpc::CallbackServerContext* context,
                                                 const v1::ListGroupsRequest* request,
                                                 v1::ListGroupsResponse* response) {
  // Groups come in name order: a page starts after the token, the last name of the page before.
  for (const auto& group : engine_->ListGroups()) {
    if (!request->page_token().empty() && group.config.name <= request->page_token()) continue;
    if (response->groups_size() == static_cast<int>(kMaxGroupsPerAnswer)) {
      response->set_next_page_token(response->groups().rbegin()->config().name());
      break;
    }
    ToProto(group, response->add_groups());
  }
  return Finish(context, "ListGroups", OkStatus());
}

grpc::ServerUnaryReactor* EpdService::DestroyGroup(grpc::CallbackServerContext* context,
                                                   const v1::DestroyGroupRequest* request,
                                                   v1::DestroyGroupResponse*) {
  if (Status denied = Authorize(context, request->session_id()); !denied.ok()) {
    return Finish(context, "DestroyGroup", denied);
  }
  return Deferred(&pending_calls_, context, "DestroyGroup", [&](StatusCallback done) {
    engine_->DestroyGroup(request->session_id(), request->name(), std::move(done));
  });
}

grpc::ServerUnaryReactor* EpdService::CreateHandle(grpc::CallbackServerContext* context,
                                                   const v1::CreateHandleRequest* request,
                                                   v1::HandleInfo* response) {
  Status touched = Authorize(context, request->session_id());
  if (!touched.ok()) return Finish(context, "CreateHandle", touched);
  DeferredCall call(&pending_calls_, context, "CreateHandle");
  engine_->CreateHandle(request->session_id(), request->group(),
                        request->has_rank() ? request->rank() : -1, request->name(),
                        request->persistent(), [call, response](StatusOr<HandleInfo> handle) {
                          call.Finish(handle.status(), [&] { ToProto(*handle, response); });
                        });
  return call.reactor();
}

grpc::ServerUnaryReactor* EpdService::AttachHandle(grpc::CallbackServerContext* context,
                                                   const v1::AttachHandleRequest* request,
                                                   v1::HandleInfo* response) {
  Status touched = Authorize(context, request->session_id());
  if (!touched.ok()) return Finish(context, "AttachHandle", touched);
  auto handle = engine_->AttachHandle(request->session_id(), request->name());
  if (!handle.ok()) return Finish(context, "AttachHandle", handle.status());
  ToProto(*handle, response);
  return Finish(context, "AttachHandle", OkStatus());
}

grpc::ServerUnaryReactor* EpdService::AttachDataPlane(grpc::CallbackServerContext* context,
                                                      const v1::AttachDataPlaneRequest* request,
                                                      v1::DataPlaneInfo* response) {
  Status touched = Authorize(context, request->session_id());
  if (!touched.ok()) return Finish(context, "AttachDataPlane", touched);
  // Exports and the first reset talk to the device: on the engine's control worker.
  DeferredCall call(&pending_calls_, context, "AttachDataPlane");
  engine_->AttachDataPlane(request->session_id(), request->handle_id(), request->reset_epoch(),
                           [call, response](StatusOr<DataPlaneInfo> info) {
                             call.Finish(info.status(), [&] { ToProto(*info, response); });
                           });
  return call.reactor();
}

grpc::ServerUnaryReactor* EpdService::DestroyHandle(grpc::CallbackServerContext* context,
                                                    const v1::DestroyHandleRequest* request,
                                                    v1::DestroyHandleResponse*) {
  if (Status denied = Authorize(context, request->session_id()); !denied.ok()) {
    return Finish(context, "DestroyHandle", denied);
  }
  return Deferred(&pending_calls_, context, "DestroyHandle", [&](StatusCallback done) {
    engine_->DestroyHandle(request->session_id(), request->handle_id(), std::move(done));
  });
}

grpc::ServerUnaryReactor* EpdService::UpdateHandle(grpc::CallbackServerContext* context,
                                                   const v1::UpdateHandleRequest* request,
                                                   v1::OpResponse*) {
  return SubmitOp<UpdateRequest>(
      &pending_calls_, context, "UpdateHandle", *request,
      [this, context](SessionId s) { return Authorize(context, s); },
      [this](SessionId s, const UpdateRequest& r, const OpOptions& o, OpDone done) {
        return engine_->SubmitUpdate(s, r, o, std::move(done));
      });
}

grpc::ServerUnaryReactor* EpdService::Dispatch(grpc::CallbackServerContext* context,
                                               const v1::DispatchRequest* request,
                                               v1::OpResponse*) {
  return SubmitOp<DispatchRequest>(
      &pending_calls_, context, "Dispatch", *request,
      [this, context](SessionId s) { return Authorize(context, s); },
      [this](SessionId s, const DispatchRequest& r, const OpOptions& o, OpDone done) {
        return engine_->SubmitDispatch(s, r, o, std::move(done));
      });
}

grpc::ServerUnaryReactor* EpdService::Combine(grpc::CallbackServerContext* context,
                                              const v1::CombineRequest* request, v1::OpResponse*) {
  return SubmitOp<CombineRequest>(
      &pending_calls_, context, "Combine", *request,
      [this, context](SessionId s) { return Authorize(context, s); },
      [this](SessionId s, const CombineRequest& r, const OpOptions& o, OpDone done) {
        return engine_->SubmitCombine(s, r, o, std::move(done));
      });
}

}  // namespace epd::service
