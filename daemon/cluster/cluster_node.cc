#include "daemon/cluster/cluster_node.h"

#include <random>

#include "common/grpc_status.h"
#include "daemon/cluster/cluster_proto.h"
#include "daemon/core/log.h"

namespace epd::cluster {
namespace {

constexpr std::chrono::milliseconds kStoreCallTimeout{5'000};
constexpr std::chrono::milliseconds kFirstBackoff{20};
constexpr std::chrono::milliseconds kMaxBackoff{500};
// One join attempt: a connection stuck in its handshake is abandoned and retried.
constexpr std::chrono::milliseconds kJoinAttemptTimeout{1'000};

// The call did not get through (the leader is down, restarting or cut off): it may later.
bool LeaderUnreachable(const Status& status) {
  return status.code() == StatusCode::kUnavailable ||
         status.code() == StatusCode::kDeadlineExceeded;
}

// Worth another try within the bootstrap timeout: the leader is not up yet, or a restarted
// node's predecessor still holds the lease.
bool Retryable(const Status& status) {
  return LeaderUnreachable(status) || status.code() == StatusCode::kAlreadyExists;
}

uint64_t NewIncarnation() {
  std::random_device random;
  return (static_cast<uint64_t>(random()) << 32) ^ random() ^ 1;  // never 0
}

}  // namespace

ClusterNode::ClusterNode(const ClusterSettings& settings, int ranks_per_node, std::string token)
    : settings_(settings),
      ranks_per_node_(ranks_per_node),
      token_(std::move(token)),
      incarnation_(NewIncarnation()),
      peers_(settings.nodes) {}

StatusOr<std::shared_ptr<ClusterNode>> ClusterNode::Start(const ClusterSettings& settings,
                                                          int ranks_per_node, std::string token) {
  std::shared_ptr<ClusterNode> node(new ClusterNode(settings, ranks_per_node, std::move(token)));
  if (settings.node_rank == 0) {
    node->membership_ = std::make_shared<Membership>(settings.nodes, ranks_per_node,
                                                     settings.leader, settings.peer_timeout);
    const std::string listen = settings.listen.empty() ? settings.leader : settings.listen;
    EPD_ASSIGN_OR_RETURN(node->server_,
                         ClusterServer::Start(listen, node->token_, node->membership_));
    EPD_LOG(kRpc, info, "cluster: leader of {} nodes x {} ranks, serving the Cluster service on {}",
            settings.nodes, ranks_per_node, listen);
    return node;
  }
  EPD_RETURN_IF_ERROR(node->JoinWithBackoff());
  node->heartbeat_ = std::thread([raw = node.get()] { raw->HeartbeatLoop(); });
  return node;
}

ClusterNode::~ClusterNode() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  stop_changed_.notify_all();
  if (heartbeat_.joinable()) heartbeat_.join();
}

std::unique_ptr<grpc::ClientContext> ClusterNode::Context(std::chrono::milliseconds timeout) const {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() + timeout);
  return context;
}

std::unique_ptr<v1::Cluster::Stub> ClusterNode::NewLeaderStub() const {
  // A fresh channel per join attempt: a channel that failed to connect keeps its own reconnect
  // backoff (seconds), so the bounded backoff of the join decides when to try again instead.
  grpc::ChannelArguments arguments;
  arguments.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, static_cast<int>(kFirstBackoff.count()));
  arguments.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, static_cast<int>(kFirstBackoff.count()));
  arguments.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, static_cast<int>(kMaxBackoff.count()));
  return v1::Cluster::NewStub(grpc::CreateCustomChannel(
      settings_.leader, grpc::InsecureChannelCredentials(), arguments));
}

StatusOr<v1::JoinResponse> ClusterNode::JoinOnce(v1::Cluster::Stub& stub) {
  v1::JoinRequest request;
  request.set_token(token_);
  request.set_node_rank(settings_.node_rank);
  request.set_nodes(settings_.nodes);
  request.set_ranks_per_node(ranks_per_node_);
  request.set_address(settings_.address);
  request.set_incarnation(incarnation_);
  {
    // One above what this daemon raised or asked for: a generation it may have used with a
    // leader that is gone (README, Multi-node: when the leader dies).
    std::lock_guard lock(floors_mu_);
    for (const auto& [key, value] : floors_) {
      v1::StoreFloor* floor = request.add_floors();
      floor->set_key(key);
      floor->set_value(value + 1);
    }
  }
  v1::JoinResponse response;
  auto context = Context(std::min(settings_.bootstrap_timeout, kJoinAttemptTimeout));
  grpc::Status status = stub.Join(context.get(), request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

Status ClusterNode::JoinWithBackoff() {
  const auto deadline = std::chrono::steady_clock::now() + settings_.bootstrap_timeout;
  auto backoff = kFirstBackoff;
  int attempts = 0;
  for (;;) {
    ++attempts;
    auto stub = NewLeaderStub();
    auto joined = JoinOnce(*stub);
    if (joined.ok()) {
      stub_ = std::move(stub);  // before the heartbeat thread starts: no other user yet
      std::lock_guard lock(mutex_);
      last_view_ = FromProto(joined->view());
      leader_reachable_ = true;
      EPD_LOG(kRpc, info, "cluster: joined the leader at {} as node {} of {}{}", settings_.leader,
              settings_.node_rank, settings_.nodes,
              joined->rejoined() ? " (again, after a restart)" : "");
      return OkStatus();
    }
    const Status& error = joined.status();
    if (!Retryable(error)) {
      EPD_LOG(kRpc, error, "cluster: the leader at {} refused node {}: {}", settings_.leader,
              settings_.node_rank, error.ToString());
      return Status(error.code(), fmt::format("cluster: the leader at {} refused node {}: {}",
                                              settings_.leader, settings_.node_rank,
                                              error.message()));
    }
    if (attempts == 1) {
      EPD_LOG(kRpc, info, "cluster: leader at {} not ready ({}); retrying for up to {} ms",
              settings_.leader, error.message(), settings_.bootstrap_timeout.count());
    }
    const auto now = std::chrono::steady_clock::now();
    if (now + backoff >= deadline) {
      EPD_LOG(kRpc, error, "cluster: node {} could not join the leader at {} within {} ms: {}",
              settings_.node_rank, settings_.leader, settings_.bootstrap_timeout.count(),
              error.ToString());
      return DeadlineExceededError(
          "cluster: node {} could not join the leader at {} within cluster.bootstrap_timeout_ms "
          "= {} ({} attempts; last: {}). Start the leader (node 0) and check cluster.leader",
          settings_.node_rank, settings_.leader, settings_.bootstrap_timeout.count(), attempts,
          error.ToString());
    }
    std::unique_lock lock(mutex_);
    if (stop_changed_.wait_for(lock, backoff, [this] { return stopping_; })) {
      return UnavailableError("cluster: stopped while joining");
    }
    backoff = std::min(backoff * 2, kMaxBackoff);
  }
}

void ClusterNode::HeartbeatLoop() {
  const auto period = std::max(settings_.peer_timeout / 4, std::chrono::milliseconds(10));
  const auto call_timeout = std::max(period, std::chrono::milliseconds(100));
  for (;;) {
    {
      // A retire wakes it early: it goes out after one heartbeat instead of a period later.
      std::unique_lock lock(mutex_);
      stop_changed_.wait_for(lock, period, [this] { return stopping_ || retire_waiting_; });
      if (stopping_) return;
      retire_waiting_ = false;
    }
    v1::HeartbeatRequest request;
    request.set_token(token_);
    request.set_node_rank(settings_.node_rank);
    request.set_incarnation(incarnation_);
    v1::ClusterView view;
    auto context = Context(call_timeout);
    Status status = FromGrpcStatus(stub_->Heartbeat(context.get(), request, &view));
    if (status.code() == StatusCode::kFailedPrecondition) {
      // The leader restarted and lost its membership: join it again. It never counted this
      // daemon among the users of an ended group's integer, so there is nothing to retire.
      EPD_LOG(kRpc, warn, "cluster: the leader no longer knows node {}; joining again",
              settings_.node_rank);
      {
        std::lock_guard lock(retires_mu_);
        unsent_retires_.clear();
      }
      auto joined = JoinOnce(*stub_);
      status = joined.ok() ? OkStatus() : joined.status();
      if (joined.ok()) view = joined->view();
    }
    {
      std::lock_guard lock(mutex_);
      if (status.ok()) {
        if (!leader_reachable_) EPD_LOG(kRpc, info, "cluster: the leader is reachable again");
        last_view_ = FromProto(view);
        leader_reachable_ = true;
      } else if (leader_reachable_) {
        EPD_LOG(kRpc, warn, "cluster: heartbeat to the leader at {} failed: {}", settings_.leader,
                status.ToString());
        leader_reachable_ = false;
      }
    }
    if (status.ok()) SendRetires(call_timeout);
  }
}

void ClusterNode::SendRetires(std::chrono::milliseconds timeout) {
  for (;;) {
    std::pair<std::string, int64_t> retire;
    {
      std::lock_guard lock(retires_mu_);
      if (unsent_retires_.empty()) return;
      retire = *unsent_retires_.begin();
      retire_in_flight_ = retire.first;
    }
    v1::StoreRetireRequest request;
    request.set_key(retire.first);
    request.set_value(retire.second);
    request.set_node_rank(settings_.node_rank);
    v1::StoreRetireResponse response;
    const Status status =
        CallStore(&v1::Cluster::Stub::StoreRetire, std::move(request), &response, timeout);
    std::lock_guard lock(retires_mu_);
    retire_in_flight_.clear();
    retire_sent_.notify_all();
    auto it = unsent_retires_.find(retire.first);
    if (!status.ok()) {
      // Kept for the next heartbeat the leader answers; one whose request it refused (a token
      // changed on it) is dropped, since no later heartbeat would get it through either.
      EPD_LOG(kRpc, warn, "cluster: retiring '{}' at the leader failed: {}", retire.first,
              status.ToString());
      if (LeaderUnreachable(status)) return;
      if (it != unsent_retires_.end()) unsent_retires_.erase(it);
      continue;
    }
    // A later Retire of the key (a newer group of the name) raises further: kept then.
    if (it != unsent_retires_.end() && it->second <= retire.second) unsent_retires_.erase(it);
  }
}

GroupConfig::Span ClusterNode::Span() const {
  return GroupConfig::Span{settings_.node_rank, settings_.nodes, ranks_per_node_};
}

ClusterView ClusterNode::View() const {
  ClusterView view;
  if (membership_ != nullptr) {
    view = membership_->View();
  } else {
    std::lock_guard lock(mutex_);
    view = last_view_;
    if (!leader_reachable_ && !view.members.empty()) view.members[0].state = NodeState::kDown;
  }
  view.node_rank = settings_.node_rank;
  view.leader = settings_.leader;
  for (ClusterMember& member : view.members) {
    if (member.node_rank >= 0 && member.node_rank < settings_.nodes) {
      const PeerCounters& peer = peers_[member.node_rank];
      member.transport_failures = peer.failures.load();
      member.bytes_sent = peer.bytes_sent.load();
      member.bytes_received = peer.bytes_received.load();
    }
  }
  return view;
}

template <typename Request, typename Response>
Status ClusterNode::CallStore(grpc::Status (v1::Cluster::Stub::*method)(grpc::ClientContext*,
                                                                        const Request&, Response*),
                              Request request, Response* response,
                              std::chrono::milliseconds timeout) const {
  request.set_token(token_);
  auto context = Context(timeout);
  return FromGrpcStatus((stub_.get()->*method)(context.get(), request, response));
}

Status ClusterNode::Set(const std::string& key, const std::string& value) {
  if (membership_ != nullptr) {
    membership_->Set(key, value);
    return OkStatus();
  }
  v1::StoreSetRequest request;
  request.set_key(key);
  request.set_value(value);
  v1::StoreSetResponse response;
  return CallStore(&v1::Cluster::Stub::StoreSet, std::move(request), &response, kStoreCallTimeout);
}

StatusOr<std::optional<std::string>> ClusterNode::Get(const std::string& key) {
  if (membership_ != nullptr) return membership_->Get(key);
  v1::StoreGetRequest request;
  request.set_key(key);
  v1::StoreGetResponse response;
  Status status =
      CallStore(&v1::Cluster::Stub::StoreGet, std::move(request), &response, kStoreCallTimeout);
  if (status.code() == StatusCode::kNotFound) return std::optional<std::string>();
  EPD_RETURN_IF_ERROR(status);
  return std::optional<std::string>(response.value());
}

StatusOr<int64_t> ClusterNode::Max(const std::string& key, int64_t value) {
  if (membership_ != nullptr) return membership_->Max(key, value, settings_.node_rank);
  {
    std::unique_lock lock(retires_mu_);
    unsent_retires_.erase(key);  // this daemon uses the integer again
    retire_sent_.wait(lock, [&] { return retire_in_flight_ != key; });  // bounded by its call
  }
  NoteFloor(key, value);  // asked for, whether or not the leader answers
  v1::StoreMaxRequest request;
  request.set_key(key);
  request.set_value(value);
  request.set_node_rank(settings_.node_rank);
  v1::StoreMaxResponse response;
  EPD_RETURN_IF_ERROR(
      CallStore(&v1::Cluster::Stub::StoreMax, std::move(request), &response, kStoreCallTimeout));
  NoteFloor(key, response.value());
  return response.value();
}

void ClusterNode::NoteFloor(const std::string& key, int64_t value) {
  std::lock_guard lock(floors_mu_);
  int64_t& floor = floors_[key];
  floor = std::max(floor, value);
}

void ClusterNode::Retire(const std::string& key, int64_t value) {
  if (membership_ != nullptr) {
    membership_->Retire(key, value, settings_.node_rank);
    return;
  }
  ForgetFloor(key);
  {
    std::lock_guard lock(retires_mu_);
    int64_t& unsent = unsent_retires_[key];
    unsent = std::max(unsent, value);
  }
  std::lock_guard lock(mutex_);
  if (!leader_reachable_) {
    EPD_LOG(kRpc, info, "cluster: the leader is unreachable; '{}' is retired once it answers", key);
  }
  retire_waiting_ = true;
  stop_changed_.notify_all();
}

void ClusterNode::ForgetFloor(const std::string& key) {
  std::lock_guard lock(floors_mu_);
  floors_.erase(key);
}

void ClusterNode::ReportTransportFailure(int node) {
  if (node >= 0 && node < settings_.nodes) peers_[node].failures.fetch_add(1);
}

void ClusterNode::ReportTransportBytes(int node, uint64_t sent, uint64_t received) {
  if (node < 0 || node >= settings_.nodes) return;
  peers_[node].bytes_sent.fetch_add(sent, std::memory_order_relaxed);
  peers_[node].bytes_received.fetch_add(received, std::memory_order_relaxed);
}

}  // namespace epd::cluster
