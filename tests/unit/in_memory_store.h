// The leader's key-value store (cluster::Membership) as a ClusterStore without gRPC, for unit
// tests of what meets through it (gloo meshes, NCCL unique ids). A store acts as node 0; Node(n)
// is node n's daemon on the same store, counted as its own user of the store's integers.
#pragma once

#include <chrono>
#include <memory>
#include <set>
#include <string>

#include "daemon/cluster/membership.h"
#include "daemon/core/cluster.h"

namespace epd::testing {

class InMemoryStore : public ClusterStore {
 public:
  // Every node has joined, unless `joined` is false (then only the leader, node 0, is there).
  explicit InMemoryStore(int nodes, bool joined = true)
      : members_(std::make_shared<cluster::Membership>(nodes, 1, "127.0.0.1:1",
                                                       std::chrono::milliseconds(60'000))),
        nodes_(nodes) {
    for (int n = 1; joined && n < nodes; ++n) Join(n);
  }
  // Node `node` on the same store (its own failures and forgotten floors).
  InMemoryStore Node(int node) const { return InMemoryStore(members_, nodes_, node); }
  void Join(int node) { (void)members_->Join(node, nodes_, 1, "127.0.0.1:1", node); }

  GroupConfig::Span Span() const override { return {node_, nodes_, 1}; }
  const std::string& transport_host() const override { return host_; }
  ClusterView View() const override { return members_->View(); }
  Status Set(const std::string& key, const std::string& value) override {
    members_->Set(key, value);
    return OkStatus();
  }
  StatusOr<std::optional<std::string>> Get(const std::string& key) override {
    return members_->Get(key);
  }
  StatusOr<int64_t> Max(const std::string& key, int64_t value) override {
    return members_->Max(key, value, node_);
  }
  // At once: this store's leader never goes down.
  void Retire(const std::string& key, int64_t value) override {
    forgotten_.insert(key);
    members_->Retire(key, value, node_);
  }
  bool forgot(const std::string& key) const { return forgotten_.count(key) > 0; }
  void ReportTransportFailure(int node) override { ++failures_[node]; }
  void ReportTransportBytes(int /*node*/, uint64_t /*sent*/, uint64_t /*received*/) override {}
  int failures(int node) const { return failures_[node]; }

 private:
  InMemoryStore(std::shared_ptr<cluster::Membership> members, int nodes, int node)
      : members_(std::move(members)), nodes_(nodes), node_(node) {}

  std::shared_ptr<cluster::Membership> members_;
  const int nodes_;
  int node_ = 0;
  const std::string host_ = "127.0.0.1";
  int failures_[8] = {};
  std::set<std::string> forgotten_;  // Retire's keys
};

}  // namespace epd::testing
