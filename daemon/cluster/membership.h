// Membership: the leader's table of the deployment's nodes and the key-value store their group
// transports rendezvous through. Plain data behind one mutex, no gRPC (cluster_service.h
// serves it), so the join rules are unit-testable.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "daemon/core/cluster.h"

namespace epd::cluster {

struct JoinOutcome {
  bool rejoined = false;  // an earlier start of a daemon held this node rank
};

class Membership {
 public:
  using Clock = std::chrono::steady_clock;
  // The leader is node 0 and a member from the start.
  Membership(int nodes, int ranks_per_node, std::string leader_address,
             std::chrono::milliseconds peer_timeout);

  // INVALID_ARGUMENT: node_rank outside [1, nodes). FAILED_PRECONDITION: nodes or
  // ranks_per_node differ from the leader's. ALREADY_EXISTS: a live daemon with another
  // incarnation holds the node rank (a restarted node joins once the old one's heartbeats
  // stopped for peer_timeout).
  // `floors`: store integers raised to at least these values before the node shows up in
  // the view (what the node knew of a store this leader lost when it restarted).
  StatusOr<JoinOutcome> Join(int node_rank, int nodes, int ranks_per_node,
                             const std::string& address, uint64_t incarnation,
                             const std::map<std::string, int64_t>& floors = {});
  // FAILED_PRECONDITION when the node rank is not held by this incarnation (it must Join).
  Status Heartbeat(int node_rank, uint64_t incarnation);

  ClusterView View() const;
  // A call to the cluster port was refused (counted in the view).
  void CountRefusal() { refused_calls_.fetch_add(1, std::memory_order_relaxed); }

  int nodes() const { return nodes_; }

  void Set(const std::string& key, std::string value);
  std::optional<std::string> Get(const std::string& key) const;
  // Raises the integer at `key` to at least `value` and returns the result; `node` counts
  // among the integer's users from then on.
  int64_t Max(const std::string& key, int64_t value, int node);
  // `node` no longer uses the integer at `key` (the group it numbers ended there): raised to
  // at least `value`, and once no node uses it, erased with every key under its prefix.
  void Retire(const std::string& key, int64_t value, int node);

 private:
  struct Member {
    std::string address;
    uint64_t incarnation = 0;
    uint64_t joins = 0;
    Clock::time_point last_seen{};
  };
  bool UpLocked(const Member& member, Clock::time_point now) const;
  int64_t MaxLocked(const std::string& key, int64_t value);
  // `node` stops using the integer at `key`; the integer goes when that was its last user.
  void ReleaseLocked(const std::string& key, int node);
  // `key` a group transport's "<prefix>/generation" (core/cluster.h) raised to `generation`:
  // erases "<prefix>/g<k>/..." for every k below it (no transport starts one below the stored
  // integer, and those waiting on one give up when it moved).
  void DropGenerationsBelowLocked(std::string_view key, int64_t generation);

  const int nodes_;
  const int ranks_per_node_;
  const std::chrono::milliseconds peer_timeout_;
  std::atomic<uint64_t> refused_calls_{0};
  mutable std::mutex mutex_;
  std::vector<Member> members_;  // by node rank; joins == 0: never joined
  std::map<std::string, std::string> store_;
  // The nodes whose transports use each store integer: noted at Max and at a join's floors,
  // until the node retires it or joins again as a restarted daemon. A group name no node uses
  // any more leaves nothing in the store, however many names a deployment goes through.
  std::map<std::string, std::set<int>> users_;
};

}  // namespace epd::cluster
