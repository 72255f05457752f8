#include "daemon/backends/cpu/spanning_transport.h"

#include <gloo/transport/tcp/device.h>

#include <exception>

namespace epd {

SpanningTransport::SpanningTransport(std::shared_ptr<ClusterStore> cluster)
    : cluster_(std::move(cluster)) {}

StatusOr<std::vector<std::unique_ptr<GlooRankLink>>> SpanningTransport::LinksFor(
    const GroupConfig& config, const std::shared_ptr<TransportRecord>& record) {
  if (cluster_ == nullptr) {
    return FailedPreconditionError(
        "group '{}' spans nodes, but this daemon is not part of a multi-node deployment "
        "([cluster] nodes >= 2)",
        config.name);
  }
  std::shared_ptr<gloo::transport::Device> device;
  {
    std::lock_guard lock(mutex_);
    if (device_ == nullptr) {
      try {
        gloo::transport::tcp::attr attr;
        attr.hostname = cluster_->transport_host();
        device_ = gloo::transport::tcp::CreateDevice(attr);
      } catch (const std::exception& error) {
        return UnavailableError("cannot create the gloo TCP device on cluster.address = {}: {}",
                                cluster_->transport_host(), error.what());
      }
    }
    device = device_;
  }
  std::vector<std::unique_ptr<GlooRankLink>> links(config.world_size());
  for (int g : config.HostedGroupRanks()) {
    links[g] = std::make_unique<GlooRankLink>(config, g, *cluster_, device, record);
  }
  return links;
}

}  // namespace epd
