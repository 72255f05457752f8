// The leader's key-value store (cluster::Membership) as a ClusterStore without gRPC, for unit
// tests of what meets through it (gloo meshes, NCCL unique ids).
#pragma once

#include <chrono>
#include <set>
#include <string>

#include "daemon/cluster/membership.h"
#include "daemon/core/cluster.h"

namespace epd::testing {

class InMemoryStore : public ClusterStore {
 public:
  // Every node has joined, unless `joined` is false (then only the leader, node 0, is there).
  explicit InMemoryStore(int nodes, bool joined = true)
      : members_(nodes, 1, "127.0.0.1:1", std::chrono::milliseconds(60'000)), nodes_(nodes) {
    for (int n = 1; joined && n < nodes; ++n) Join(n);
  }
  void Join(int node) { (void)members_.Join(node, nodes_, 1, "127.0.0.1:1", node); }
  GroupConfig::Span Span() const override { return {0, nodes_, 1}; }
  const std::string& transport_host() const override { return host_; }
  ClusterView View() const override { return members_.View(); }
  Status Set(const std::string& key, const std::string& value) override {
    members_.Set(key, value);
    return OkStatus();
  }
  StatusOr<std::optional<std::string>> Get(const std::string& key) override {
    return members_.Get(key);
  }
  StatusOr<int64_t> Max(const std::string& key, int64_t value) override {
    return members_.Max(key, value);
  }
  void ForgetFloor(const std::string& key) override { forgotten_.insert(key); }
  bool forgot(const std::string& key) const { return forgotten_.count(key) > 0; }
  void ReportTransportFailure(int node) override { ++failures_[node]; }
  void ReportTransportBytes(int /*node*/, uint64_t /*sent*/, uint64_t /*received*/) override {}
  int failures(int node) const { return failures_[node]; }

 private:
  cluster::Membership members_;
  const int nodes_;
  const std::string host_ = "127.0.0.1";
  int failures_[8] = {};
  std::set<std::string> forgotten_;  // ForgetFloor's keys
};

}  // namespace epd::testing
