// EpdService: the epd.v1.Epd gRPC callback service over the core Engine.
//
// Each handler translates its request (convert.h), calls the engine and finishes the reactor.
// Ops (UpdateHandle, Dispatch, Combine) finish from the engine's completion callback; calls
// that create or release anything (groups, handles, buffers, fences, CloseSession) finish
// from the engine's control worker. A reactor thread never waits for the device or for a
// lock held across one. Every engine call that names a session keeps a unary session from
// idling out.
#pragma once

#include <string>

#include "daemon/core/engine.h"
#include "daemon/service/peer_credentials.h"
#include "daemon/service/pending_calls.h"
#include "daemon/service/session_stream.h"
#include "epd/v1/epd.grpc.pb.h"

namespace epd::service {

class EpdService final : public v1::Epd::CallbackService {
 public:
  // `peers`: credentials of the unix socket's connections; null when none are known (tests).
  EpdService(Engine* engine, std::string daemon_version, const PeerTable* peers);

  // Daemon shutdown, after the engine drained: ends every Session stream and every unary op
  // call still waiting for the engine with `status`, so the server can stop.
  void EndAllCalls(const Status& status);

  grpc::ServerUnaryReactor* GetNodeInfo(grpc::CallbackServerContext* context,
                                        const v1::GetNodeInfoRequest* request,
                                        v1::NodeInfo* response) override;
  grpc::ServerUnaryReactor* GetStats(grpc::CallbackServerContext* context,
                                     const v1::GetStatsRequest* request,
                                     v1::Stats* response) override;
  grpc::ServerUnaryReactor* ListSessions(grpc::CallbackServerContext* context,
                                         const v1::ListSessionsRequest* request,
                                         v1::ListSessionsResponse* response) override;
  grpc::ServerBidiReactor<v1::SessionRequest, v1::SessionResponse>* Session(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* OpenSession(grpc::CallbackServerContext* context,
                                        const v1::OpenSessionRequest* request,
                                        v1::OpenSessionResponse* response) override;
  grpc::ServerUnaryReactor* CloseSession(grpc::CallbackServerContext* context,
                                         const v1::CloseSessionRequest* request,
                                         v1::CloseSessionResponse* response) override;
  grpc::ServerUnaryReactor* RegisterBuffer(grpc::CallbackServerContext* context,
                                           const v1::RegisterBufferRequest* request,
                                           v1::RegisterBufferResponse* response) override;
  grpc::ServerUnaryReactor* ReleaseBuffer(grpc::CallbackServerContext* context,
                                          const v1::ReleaseBufferRequest* request,
                                          v1::ReleaseBufferResponse* response) override;
  grpc::ServerUnaryReactor* CreateFence(grpc::CallbackServerContext* context,
                                        const v1::CreateFenceRequest* request,
                                        v1::CreateFenceResponse* response) override;
  grpc::ServerUnaryReactor* DestroyFence(grpc::CallbackServerContext* context,
                                         const v1::DestroyFenceRequest* request,
                                         v1::DestroyFenceResponse* response) override;
  grpc::ServerUnaryReactor* CreateGroup(grpc::CallbackServerContext* context,
                                        const v1::CreateGroupRequest* request,
                                        v1::CreateGroupResponse* response) override;
  grpc::ServerUnaryReactor* ListGroups(grpc::CallbackServerContext* context,
                                       const v1::ListGroupsRequest* request,
                                       v1::ListGroupsResponse* response) override;
  grpc::ServerUnaryReactor* DestroyGroup(grpc::CallbackServerContext* context,
                                         const v1::DestroyGroupRequest* request,
                                         v1::DestroyGroupResponse* response) override;
  grpc::ServerUnaryReactor* CreateHandle(grpc::CallbackServerContext* context,
                                         const v1::CreateHandleRequest* request,
                                         v1::HandleInfo* response) override;
  grpc::ServerUnaryReactor* AttachDataPlane(grpc::CallbackServerContext* context,
                                            const v1::AttachDataPlaneRequest* request,
                                            v1::DataPlaneInfo* response) override;
  grpc::ServerUnaryReactor* AttachHandle(grpc::CallbackServerContext* context,
                                         const v1::AttachHandleRequest* request,
                                         v1::HandleInfo* response) override;
  grpc::ServerUnaryReactor* UpdateHandle(grpc::CallbackServerContext* context,
                                         const v1::UpdateHandleRequest* request,
                                         v1::OpResponse* response) override;
  grpc::ServerUnaryReactor* DestroyHandle(grpc::CallbackServerContext* context,
                                          const v1::DestroyHandleRequest* request,
                                          v1::DestroyHandleResponse* response) override;
  grpc::ServerUnaryReactor* Dispatch(grpc::CallbackServerContext* context,
                                     const v1::DispatchRequest* request,
                                     v1::OpResponse* response) override;
  grpc::ServerUnaryReactor* Combine(grpc::CallbackServerContext* context,
                                    const v1::CombineRequest* request,
                                    v1::OpResponse* response) override;

 private:
  std::optional<PeerCredentials> CredentialsOf(grpc::CallbackServerContext* context) const;
  SessionPeer CallerOf(grpc::CallbackServerContext* context) const;
  // Touches `session` if the caller opened it and presents its secret in header
  // kSessionSecretHeader: PERMISSION_DENIED naming the header when the header is missing or
  // malformed or the credential does not match, NOT_FOUND when the session is not open.
  Status Authorize(grpc::CallbackServerContext* context, SessionId session) const;

  Engine* const engine_;
  const std::string daemon_version_;
  const PeerTable* const peers_;
  SessionStreamRegistry streams_;
  PendingUnaryCalls pending_calls_;
};

}  // namespace epd::service
