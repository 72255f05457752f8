// SpanningTransport: the cpu backend's entry to other daemons. Owns the gloo TCP device (bound
// to the cluster's transport address, created at the first spanning group) and makes the
// links of the group ranks this daemon hosts.
#pragma once

#include <memory>
#include <mutex>
#include <vector>

#include "common/status.h"
#include "daemon/backends/cpu/gloo_rank_link.h"
#include "daemon/core/cluster.h"
#include "daemon/core/group_config.h"

namespace epd {

class SpanningTransport {
 public:
  explicit SpanningTransport(std::shared_ptr<ClusterStore> cluster);

  // One link per group rank this daemon hosts (null for the others), each telling `record`
  // what its mesh went through. FAILED_PRECONDITION when the daemon is not part of a cluster.
  StatusOr<std::vector<std::unique_ptr<GlooRankLink>>> LinksFor(
      const GroupConfig& config, const std::shared_ptr<TransportRecord>& record);

 private:
  std::shared_ptr<ClusterStore> cluster_;
  std::mutex mutex_;
  std::shared_ptr<gloo::transport::Device> device_;
};

}  // namespace epd
