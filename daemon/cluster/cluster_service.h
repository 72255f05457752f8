// The leader's epd.v1.Cluster service (proto/epd/v1/cluster.proto) over Membership, on its own
// TCP listener (cluster.listen), separate from the frontends' socket. Every call checks the
// deployment token first: a wrong one is UNAUTHENTICATED and logged without its content.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "common/status.h"
#include "daemon/cluster/membership.h"
#include "epd/v1/cluster.grpc.pb.h"

namespace epd::cluster {

class ClusterServer {
 public:
  static StatusOr<std::unique_ptr<ClusterServer>> Start(const std::string& listen,
                                                        std::string token,
                                                        std::shared_ptr<Membership> membership);
  ~ClusterServer();
  int port() const { return port_; }

 private:
  class Service;
  ClusterServer() = default;
  std::unique_ptr<Service> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

}  // namespace epd::cluster
