#include "daemon/service/epd_service.h"

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

// Submits an op; the reactor is finished by the engine's completion (or by shutdown, if the
// engine still holds the op then), or at once when the request does not validate.
template <typename CoreOp, typename ProtoOp, typename Submit>
grpc::ServerUnaryReactor* SubmitOp(Engine* engine, PendingUnaryCalls* pending,
                                   grpc::CallbackServerContext* context, std::string_view method,
                                   const ProtoOp& request, Submit submit) {
  CoreOp op;
  OpOptions options;
  Status status = FromProto(request, &op, &options);
  if (status.ok()) status = engine->Touch(request.session_id());
  if (!status.ok()) return Finish(context, method, status);
  auto* reactor = context->DefaultReactor();
  auto call = pending->Add(reactor);
  status = submit(request.session_id(), op, options, [pending, call, method](Status done) {
    if (!done.ok()) EPD_LOG(kRpc, debug, "{}: {}", method, done.ToString());
    pending->Finish(call, ToGrpcStatus(done));
  });
  if (!status.ok()) {  // `done` will not be called
    EPD_LOG(kRpc, debug, "{}: {}", method, status.ToString());
    pending->Finish(call, ToGrpcStatus(status));
  }
  return reactor;
}

}  // namespace

EpdService::EpdService(Engine* engine, std::string daemon_version)
    : engine_(engine), daemon_version_(std::move(daemon_version)) {}

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

grpc::ServerBidiReactor<v1::SessionRequest, v1::SessionResponse>* EpdService::Session(
    grpc::CallbackServerContext*) {
  return new SessionStream(engine_, &streams_);  // deletes itself when done
}

grpc::ServerUnaryReactor* EpdService::OpenSession(grpc::CallbackServerContext* context,
                                                  const v1::OpenSessionRequest* request,
                                                  v1::OpenSessionResponse* response) {
  auto info = engine_->OpenSession(request->rank(), request->client_name(), /*unary=*/true);
  if (!info.ok()) return Finish(context, "OpenSession", info.status());
  EPD_LOG(kRpc, debug, "unary session {:016x} opened: rank={} client='{}'", info->id, info->rank,
          info->client_name);
  response->set_session_id(info->id);
  response->set_rank(info->rank);
  return Finish(context, "OpenSession", OkStatus());
}

grpc::ServerUnaryReactor* EpdService::CloseSession(grpc::CallbackServerContext* context,
                                                   const v1::CloseSessionRequest* request,
                                                   v1::CloseSessionResponse*) {
  return Finish(context, "CloseSession",
                engine_->CloseSession(request->session_id(), "closed by the client"));
}

grpc::ServerUnaryReactor* EpdService::RegisterBuffer(grpc::CallbackServerContext* context,
                                                     const v1::RegisterBufferRequest* request,
                                                     v1::RegisterBufferResponse* response) {
  if (!request->has_source()) {
    return Finish(context, "RegisterBuffer", InvalidArgumentError("source is required"));
  }
  auto source = FromProto(request->source(), "source");
  if (!source.ok()) return Finish(context, "RegisterBuffer", source.status());
  Status touched = engine_->Touch(request->session_id());
  if (!touched.ok()) return Finish(context, "RegisterBuffer", touched);
  auto buffer = engine_->RegisterBuffer(request->session_id(), *source);
  if (!buffer.ok()) return Finish(context, "RegisterBuffer", buffer.status());
  response->set_buffer_id(buffer->id);
  return Finish(context, "RegisterBuffer", OkStatus());
}

grpc::ServerUnaryReactor* EpdService::ReleaseBuffer(grpc::CallbackServerContext* context,
                                                    const v1::ReleaseBufferRequest* request,
                                                    v1::ReleaseBufferResponse*) {
  Status status = engine_->Touch(request->session_id());
  if (status.ok()) status = engine_->ReleaseBuffer(request->session_id(), request->buffer_id());
  return Finish(context, "ReleaseBuffer", status);
}

grpc::ServerUnaryReactor* EpdService::CreateFence(grpc::CallbackServerContext* context,
                                                  const v1::CreateFenceRequest* request,
                                                  v1::CreateFenceResponse* response) {
  Status touched = engine_->Touch(request->session_id());
  if (!touched.ok()) return Finish(context, "CreateFence", touched);
  auto fence = engine_->CreateFence(request->session_id());
  if (!fence.ok()) return Finish(context, "CreateFence", fence.status());
  response->set_fence_id(fence->id);
  response->set_buffer_id(fence->buffer_id);
  *response->mutable_source() = ToProto(fence->source);
  response->set_counter_offset(fence->counter_offset);
  return Finish(context, "CreateFence", OkStatus());
}

grpc::ServerUnaryReactor* EpdService::DestroyFence(grpc::CallbackServerContext* context,
                                                   const v1::DestroyFenceRequest* request,
                                                   v1::DestroyFenceResponse*) {
  Status status = engine_->Touch(request->session_id());
  if (status.ok()) status = engine_->DestroyFence(request->session_id(), request->fence_id());
  return Finish(context, "DestroyFence", status);
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
  if (request->session_id() != 0 || !request->persistent()) {
    Status touched = engine_->Touch(request->session_id());
    if (!touched.ok()) return Finish(context, "CreateGroup", touched);
    owner = request->session_id();
  }
  Status created = engine_->CreateGroup(owner, *config, request->persistent());
  if (!created.ok()) return Finish(context, "CreateGroup", created);
  // Creating an existing group of the same shape is idempotent: answer with what exists.
  *response->mutable_config() = ToProto(*config);
  for (const auto& group : engine_->ListGroups()) {
    if (group.config.name == config->name) *response->mutable_config() = ToProto(group.config);
  }
  return Finish(context, "CreateGroup", OkStatus());
}

grpc::ServerUnaryReactor* EpdService::ListGroups(grpc::CallbackServerContext* context,
                                                 const v1::ListGroupsRequest*,
                                                 v1::ListGroupsResponse* response) {
  for (const auto& group : engine_->ListGroups()) ToProto(group, response->add_groups());
  return Finish(context, "ListGroups", OkStatus());
}

grpc::ServerUnaryReactor* EpdService::DestroyGroup(grpc::CallbackServerContext* context,
                                                   const v1::DestroyGroupRequest* request,
                                                   v1::DestroyGroupResponse*) {
  Status status = engine_->Touch(request->session_id());
  if (status.ok()) status = engine_->DestroyGroup(request->session_id(), request->name());
  return Finish(context, "DestroyGroup", status);
}

grpc::ServerUnaryReactor* EpdService::CreateHandle(grpc::CallbackServerContext* context,
                                                   const v1::CreateHandleRequest* request,
                                                   v1::HandleInfo* response) {
  if (request->group().empty()) {
    return Finish(context, "CreateHandle", InvalidArgumentError("group is empty"));
  }
  if (request->persistent() && request->name().empty()) {
    return Finish(context, "CreateHandle",
                  InvalidArgumentError("name is empty: a persistent handle needs a name"));
  }
  Status touched = engine_->Touch(request->session_id());
  if (!touched.ok()) return Finish(context, "CreateHandle", touched);
  auto handle = engine_->CreateHandle(request->session_id(), request->group(),
                                      request->has_rank() ? request->rank() : -1, request->name(),
                                      request->persistent());
  if (!handle.ok()) return Finish(context, "CreateHandle", handle.status());
  ToProto(*handle, response);
  return Finish(context, "CreateHandle", OkStatus());
}

grpc::ServerUnaryReactor* EpdService::AttachHandle(grpc::CallbackServerContext* context,
                                                   const v1::AttachHandleRequest* request,
                                                   v1::HandleInfo* response) {
  if (request->name().empty()) {
    return Finish(context, "AttachHandle", InvalidArgumentError("name is empty"));
  }
  Status touched = engine_->Touch(request->session_id());
  if (!touched.ok()) return Finish(context, "AttachHandle", touched);
  auto handle = engine_->AttachHandle(request->session_id(), request->name());
  if (!handle.ok()) return Finish(context, "AttachHandle", handle.status());
  ToProto(*handle, response);
  return Finish(context, "AttachHandle", OkStatus());
}

grpc::ServerUnaryReactor* EpdService::AttachDataPlane(grpc::CallbackServerContext* context,
                                                      const v1::AttachDataPlaneRequest* request,
                                                      v1::DataPlaneInfo* response) {
  auto info = engine_->AttachDataPlane(request->session_id(), request->handle_id(),
                                       request->reset_epoch());
  if (!info.ok()) return Finish(context, "AttachDataPlane", info.status());
  ToProto(*info, response);
  return Finish(context, "AttachDataPlane", OkStatus());
}

grpc::ServerUnaryReactor* EpdService::DestroyHandle(grpc::CallbackServerContext* context,
                                                    const v1::DestroyHandleRequest* request,
                                                    v1::DestroyHandleResponse*) {
  Status status = engine_->Touch(request->session_id());
  if (status.ok()) status = engine_->DestroyHandle(request->session_id(), request->handle_id());
  return Finish(context, "DestroyHandle", status);
}

grpc::ServerUnaryReactor* EpdService::UpdateHandle(grpc::CallbackServerContext* context,
                                                   const v1::UpdateHandleRequest* request,
                                                   v1::OpResponse*) {
  return SubmitOp<UpdateRequest>(
      engine_, &pending_calls_, context, "UpdateHandle", *request,
      [this](SessionId s, const UpdateRequest& r, const OpOptions& o, OpDone done) {
        return engine_->SubmitUpdate(s, r, o, std::move(done));
      });
}

grpc::ServerUnaryReactor* EpdService::Dispatch(grpc::CallbackServerContext* context,
                                               const v1::DispatchRequest* request,
                                               v1::OpResponse*) {
  return SubmitOp<DispatchRequest>(
      engine_, &pending_calls_, context, "Dispatch", *request,
      [this](SessionId s, const DispatchRequest& r, const OpOptions& o, OpDone done) {
        return engine_->SubmitDispatch(s, r, o, std::move(done));
      });
}

grpc::ServerUnaryReactor* EpdService::Combine(grpc::CallbackServerContext* context,
                                              const v1::CombineRequest* request, v1::OpResponse*) {
  return SubmitOp<CombineRequest>(
      engine_, &pending_calls_, context, "Combine", *request,
      [this](SessionId s, const CombineRequest& r, const OpOptions& o, OpDone done) {
        return engine_->SubmitCombine(s, r, o, std::move(done));
      });
}

}  // namespace epd::service
