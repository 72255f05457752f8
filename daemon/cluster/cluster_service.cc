#include "daemon/cluster/cluster_service.h"

#include <algorithm>
#include <chrono>
#include <map>

#include "common/grpc_status.h"
#include "daemon/cluster/cluster_proto.h"
#include "daemon/cluster/token.h"
#include "daemon/core/log.h"
#include "daemon/core/log_rate_limiter.h"

namespace epd::cluster {
namespace {

constexpr int kRefusalsLoggedPerMinute = 10;

}  // namespace

class ClusterServer::Service final : public v1::Cluster::CallbackService {
 public:
  Service(std::string token, std::shared_ptr<Membership> membership)
      : token_(std::move(token)), membership_(std::move(membership)) {}

  grpc::ServerUnaryReactor* Join(grpc::CallbackServerContext* context,
                                 const v1::JoinRequest* request,
                                 v1::JoinResponse* response) override {
    Status status = CheckToken(context, request->token(), "Join");
    if (status.ok()) {
      std::map<std::string, int64_t> floors;
      for (const v1::StoreFloor& floor : request->floors()) {
        int64_t& value = floors[floor.key()];
        value = std::max(value, floor.value());
      }
      auto joined =
          membership_->Join(request->node_rank(), request->nodes(), request->ranks_per_node(),
                            request->address(), request->incarnation(), floors);
      if (joined.ok()) {
        response->set_rejoined(joined->rejoined);
        ToProto(membership_->View(), response->mutable_view());
        EPD_LOG(kRpc, info, "cluster: node {} at {} joined{}", request->node_rank(),
                request->address(), joined->rejoined ? " again (restarted)" : "");
      } else {
        status = joined.status();
        Refused(context, fmt::format("node {}'s Join", request->node_rank()), status);
      }
    }
    return Finish(context, status);
  }

  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* context,
                                      const v1::HeartbeatRequest* request,
                                      v1::ClusterView* response) override {
    Status status = CheckToken(context, request->token(), "Heartbeat");
    // Not a refusal: a restarted leader tells a follower of its predecessor to join again.
    if (status.ok()) status = membership_->Heartbeat(request->node_rank(), request->incarnation());
    if (status.ok()) ToProto(membership_->View(), response);
    return Finish(context, status);
  }

  grpc::ServerUnaryReactor* StoreSet(grpc::CallbackServerContext* context,
                                     const v1::StoreSetRequest* request,
                                     v1::StoreSetResponse*) override {
    Status status = CheckToken(context, request->token(), "StoreSet");
    if (status.ok()) membership_->Set(request->key(), request->value());
    return Finish(context, status);
  }

  grpc::ServerUnaryReactor* StoreGet(grpc::CallbackServerContext* context,
                                     const v1::StoreGetRequest* request,
                                     v1::StoreGetResponse* response) override {
    Status status = CheckToken(context, request->token(), "StoreGet");
    if (status.ok()) {
      auto value = membership_->Get(request->key());
      if (value.has_value()) {
        response->set_value(*value);
      } else {
        status = NotFoundError("key '{}' is not set", request->key());
      }
    }
    return Finish(context, status);
  }

  grpc::ServerUnaryReactor* StoreMax(grpc::CallbackServerContext* context,
                                     const v1::StoreMaxRequest* request,
                                     v1::StoreMaxResponse* response) override {
    Status status = CheckToken(context, request->token(), "StoreMax");
    if (status.ok()) status = CheckCaller(context, request->node_rank(), "StoreMax");
    if (status.ok()) {
      response->set_value(membership_->Max(request->key(), request->value(), request->node_rank()));
    }
    return Finish(context, status);
  }

  grpc::ServerUnaryReactor* StoreRetire(grpc::CallbackServerContext* context,
                                        const v1::StoreRetireRequest* request,
                                        v1::StoreRetireResponse*) override {
    Status status = CheckToken(context, request->token(), "StoreRetire");
    if (status.ok()) status = CheckCaller(context, request->node_rank(), "StoreRetire");
    if (status.ok()) membership_->Retire(request->key(), request->value(), request->node_rank());
    return Finish(context, status);
  }

 private:
  Status CheckToken(grpc::CallbackServerContext* context, const std::string& token,
                    std::string_view call) {
    if (TokensEqual(token, token_)) return OkStatus();
    // The peer address only: the token a caller sent is as secret as ours.
    Status status(StatusCode::kUnauthenticated,
                  "wrong deployment token: the daemons' cluster.token_file contents differ");
    Refused(context, call, status);
    return status;
  }
  // The node a store call counts as a user of its integer: a follower (the leader calls its
  // store directly).
  Status CheckCaller(grpc::CallbackServerContext* context, int node_rank, std::string_view call) {
    if (node_rank >= 1 && node_rank < membership_->nodes()) return OkStatus();
    Status status = InvalidArgumentError("node_rank = {} is outside [1, nodes = {})", node_rank,
                                         membership_->nodes());
    Refused(context, call, status);
    return status;
  }
  // Counted in the cluster view; logged with the caller's address, but only the first few of
  // each minute: a node retrying with a wrong token file, or a stranger on the port, must not
  // flood the log.
  void Refused(grpc::CallbackServerContext* context, std::string_view call, const Status& status) {
    membership_->CountRefusal();
    uint64_t suppressed = 0;
    if (!refusal_log_.Allow(&suppressed)) return;
    EPD_LOG(kRpc, warn, "cluster: {} from {} refused: {}{}", call, context->peer(),
            status.message(),
            suppressed == 0 ? ""
                            : fmt::format(" ({} more refusals not logged; GetNodeInfo counts "
                                          "them all)",
                                          suppressed));
  }
  static grpc::ServerUnaryReactor* Finish(grpc::CallbackServerContext* context,
                                          const Status& status) {
    auto* reactor = context->DefaultReactor();
    reactor->Finish(ToGrpcStatus(status));
    return reactor;
  }

  const std::string token_;
  std::shared_ptr<Membership> membership_;
  LogRateLimiter refusal_log_{kRefusalsLoggedPerMinute, std::chrono::minutes(1)};
};

StatusOr<std::unique_ptr<ClusterServer>> ClusterServer::Start(
    const std::string& listen, std::string token, std::shared_ptr<Membership> membership) {
  std::unique_ptr<ClusterServer> server(new ClusterServer());
  server->service_ = std::make_unique<Service>(std::move(token), std::move(membership));
  grpc::ServerBuilder builder;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &server->port_);
  builder.RegisterService(server->service_.get());
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    return UnavailableError("cluster.listen = {}: cannot listen there (address in use or not "
                            "this host's)",
                            listen);
  }
  return server;
}

ClusterServer::~ClusterServer() {
  if (server_ != nullptr) {
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
  }
}

}  // namespace epd::cluster
