// GlooStore: gloo's rendezvous Store over the leader's key-value store (core/cluster.h), so
// gloo builds its TCP mesh from addresses the daemons exchange through the Cluster service.
// Every wait is bounded by the store's own timeout and gives up early when `abandon` says so
// (the group's formation generation moved on); gloo sees both as an exception. get() waits for
// its key like gloo's own stores do.
#pragma once

#include <gloo/rendezvous/store.h>

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "daemon/core/cluster.h"

namespace epd {

class GlooStore : public gloo::rendezvous::Store {
 public:
  GlooStore(ClusterStore& cluster, std::string prefix, std::chrono::milliseconds timeout,
            std::function<bool()> abandon);

  void set(const std::string& key, const std::vector<char>& data) override;
  std::vector<char> get(const std::string& key) override;
  void wait(const std::vector<std::string>& keys) override;
  void wait(const std::vector<std::string>& keys,
            const std::chrono::milliseconds& timeout) override;

 private:
  ClusterStore& cluster_;
  const std::string prefix_;
  const std::chrono::milliseconds timeout_;
  const std::function<bool()> abandon_;
};

}  // namespace epd
