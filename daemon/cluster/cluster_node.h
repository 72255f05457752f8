// ClusterNode: this daemon's membership in a multi-node deployment (README, "Multi-node").
//
// Node 0 (the leader) serves the Cluster service (cluster_service.h) and owns the membership
// and the key-value store. A follower joins it at startup, retrying with bounded backoff while
// the leader is unreachable or its predecessor's lease runs out, for at most
// bootstrap_timeout; a wrong token, a node- or rank-count mismatch or a duplicate node rank
// ends the start with that error. Followers then heartbeat every peer_timeout / 4 and keep
// the view the leader returns; a leader that lost them (restarted) is joined again, and every
// join carries one above each store integer this daemon raised (the leader's store went with
// its predecessor: membership.h). The heartbeat thread also hands the leader the retires of
// groups that ended here (Retire), so that a group's end never waits on the leader.
#pragma once

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"
#include "daemon/cluster/cluster_service.h"
#include "daemon/cluster/membership.h"
#include "daemon/core/cluster.h"
#include "daemon/core/daemon_config.h"
#include "epd/v1/cluster.grpc.pb.h"

namespace epd::cluster {

class ClusterNode : public ClusterStore {
 public:
  // Blocks until joined (followers), bounded by settings.bootstrap_timeout.
  static StatusOr<std::shared_ptr<ClusterNode>> Start(const ClusterSettings& settings,
                                                      int ranks_per_node, std::string token);
  ~ClusterNode() override;

  GroupConfig::Span Span() const override;
  const std::string& transport_host() const override { return settings_.address; }
  ClusterView View() const override;
  Status Set(const std::string& key, const std::string& value) override;
  StatusOr<std::optional<std::string>> Get(const std::string& key) override;
  StatusOr<int64_t> Max(const std::string& key, int64_t value) override;
  void Retire(const std::string& key, int64_t value) override;
  void ReportTransportFailure(int node) override;
  void ReportTransportBytes(int node, uint64_t sent, uint64_t received) override;

 private:
  ClusterNode(const ClusterSettings& settings, int ranks_per_node, std::string token);
  Status JoinWithBackoff();
  StatusOr<v1::JoinResponse> JoinOnce(v1::Cluster::Stub& stub);
  std::unique_ptr<v1::Cluster::Stub> NewLeaderStub() const;
  void HeartbeatLoop();
  std::unique_ptr<grpc::ClientContext> Context(std::chrono::milliseconds timeout) const;
  // One store call to the leader (followers): the token set, bounded by the store-call timeout.
  template <typename Request, typename Response>
  Status CallStore(grpc::Status (v1::Cluster::Stub::*method)(grpc::ClientContext*, const Request&,
                                                             Response*),
                   Request request, Response* response, std::chrono::milliseconds timeout) const;
  void NoteFloor(const std::string& key, int64_t value);
  void ForgetFloor(const std::string& key);
  // Followers, on the heartbeat thread after a heartbeat the leader answered: sends the
  // retires not sent yet, each bounded by `timeout`; each stays until the leader took it.
  void SendRetires(std::chrono::milliseconds timeout);

  const ClusterSettings settings_;
  const int ranks_per_node_;
  const std::string token_;
  const uint64_t incarnation_;

  std::shared_ptr<Membership> membership_;  // leader only
  std::unique_ptr<ClusterServer> server_;   // leader only
  std::unique_ptr<v1::Cluster::Stub> stub_;  // followers: the leader

  mutable std::mutex mutex_;
  std::condition_variable stop_changed_;
  bool stopping_ = false;
  ClusterView last_view_;  // followers: the leader's view at the last heartbeat
  bool leader_reachable_ = true;
  bool retire_waiting_ = false;  // Retire wakes the heartbeat thread to send it
  // What this daemon's group transports counted per peer node (ClusterMember's fields).
  struct PeerCounters {
    std::atomic<uint64_t> failures{0}, bytes_sent{0}, bytes_received{0};
  };
  std::vector<PeerCounters> peers_;
  // Followers: the highest value this daemon gave each store integer (Max), replayed one above
  // at every join. One entry per group name that spans nodes here (Retire drops those of ended
  // groups).
  std::mutex floors_mu_;
  std::map<std::string, int64_t> floors_;
  // Followers: the retires the leader has not taken yet, by key (the value to raise it to).
  // Dropped when this daemon uses the key again (Max) and when the leader restarted (it never
  // counted this daemon then: the integers of ended groups are not carried to it).
  std::mutex retires_mu_;
  std::map<std::string, int64_t> unsent_retires_;
  // The key whose retire is on its way (empty when none): a Max of it waits for that call to
  // end (retire_sent_), so the leader never takes the retire after this daemon's new use.
  std::string retire_in_flight_;
  std::condition_variable retire_sent_;
  std::thread heartbeat_;
};

}  // namespace epd::cluster
