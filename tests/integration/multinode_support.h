// Multi-node harness for integration tests: N cpu daemons on loopback forming one deployment
// (a private token file, a free leader port), and frontends of a group spanning them.
#pragma once

#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "tests/integration/client_test_support.h"
#include "tests/loopback_port.h"

namespace epd::testing {

inline constexpr int kRanksPerNode = 2;

class LoopbackCluster {
 public:
  // A deployment of `nodes` daemons of `ranks_per_node` ranks each (none started) with its own
  // token file and leader port.
  static StatusOr<std::unique_ptr<LoopbackCluster>> Create(int nodes,
                                                           int ranks_per_node = kRanksPerNode);
  ~LoopbackCluster();

  // The flags of node `node` (add or override flags after them).
  std::vector<std::string> NodeArgs(int node) const;
  // Starts node `node` (returns once it serves frontends: a follower has joined by then).
  Status StartNode(int node, std::vector<std::string> extra = {});
  // Starts every node in order, leader first.
  Status StartAll();
  DaemonProcess& node(int node) { return *daemons_[node]; }
  void KillNode(int node) { daemons_[node]->Kill(); }

  int nodes() const { return nodes_; }
  int ranks_per_node() const { return ranks_per_node_; }
  const std::string& leader() const { return leader_; }
  const std::string& token_file() const { return token_file_; }
  const std::string& dir() const { return dir_; }
  // A token file with other content, for the wrong-token test.
  StatusOr<std::string> WriteTokenFile(const std::string& name, const std::string& token) const;

 private:
  LoopbackCluster() = default;
  int nodes_ = 0;
  int ranks_per_node_ = kRanksPerNode;
  std::string dir_, token_file_, leader_;
  std::vector<std::unique_ptr<DaemonProcess>> daemons_;
};

// Copies `bytes` from where a handle view points (host or device memory) into `dst`.
using ViewCopy = std::function<void(void* dst, const void* src, size_t bytes)>;
inline void HostCopy(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }

// Every receive tensor of a rank's handle, then its combine output (of the last layer), as
// bytes to compare between deployments.
std::vector<uint8_t> Snapshot(example::RankRunner& runner, int num_tokens, const ViewCopy& copy);

// A small MoE layer over `nodes` nodes x kRanksPerNode ranks, spanning them.
example::Problem SpanningProblem(int nodes);

// One frontend per global rank g of a spanning group: its session on node g / ranks per node,
// bound to node rank g % ranks per node. `device_of_node` (cuda daemons with disjoint
// CUDA_VISIBLE_DEVICES): the GPU, as this process numbers them, of each node's frontends.
StatusOr<std::vector<RankClient>> MakeSpanningRanks(LoopbackCluster& cluster,
                                                    const example::Problem& problem,
                                                    example::RankRunnerOptions options,
                                                    const std::vector<int>& device_of_node = {});

// Polls GetNodeInfo until node `node`'s state is `state` (at most 10 s); returns the last seen.
v1::NodeState WaitForNodeState(Client& client, int node, v1::NodeState state);

// What `client`'s daemon shows (ListGroups) of `group`'s transport, per group rank it hosts.
StatusOr<std::vector<v1::RankTransport>> TransportOf(Client& client, const std::string& group);

// Polls the leader's (node 0's) GetNodeInfo until its store holds at most `bound` keys (at most
// 10 s); returns the last count seen.
StatusOr<uint64_t> WaitForLeaderStoreKeys(LoopbackCluster& cluster, uint64_t bound);

// The Prometheus text a daemon's metrics endpoint on 127.0.0.1:`port` serves (curl, 5 s at
// most); empty when it did not answer.
std::string Scrape(int port);

}  // namespace epd::testing
