#include "daemon/app/reload.h"

namespace epd::app {
namespace {

std::vector<std::string> GroupShapes(const DaemonConfig& config) {
  std::vector<std::string> shapes;
  for (const auto& group : config.groups) {
    std::string shape = group.config.ToString();
    for (const auto& handle : group.handles) {
      shape += " handle " + handle.name + " on";
      for (int rank : handle.ranks) shape += " " + std::to_string(rank);
    }
    shapes.push_back(std::move(shape));
  }
  return shapes;
}

}  // namespace

ReloadPlan PlanReload(const DaemonConfig& running, const DaemonConfig& fresh) {
  ReloadPlan plan;
  plan.log_level = fresh.log_level;
  auto differs = [&](bool changed, const char* key) {
    if (changed) plan.ignored.emplace_back(key);
  };
  differs(running.listen != fresh.listen, "listen");
  differs(running.tcp_listen != fresh.tcp_listen, "tcp_listen");
  differs(running.metrics_listen != fresh.metrics_listen, "metrics_listen");
  differs(running.metrics_group_retention != fresh.metrics_group_retention,
          "metrics_group_retention_ms");
  differs(running.backend != fresh.backend, "backend");
  differs(running.cpu_ranks != fresh.cpu_ranks, "cpu_ranks");
  differs(running.gpus != fresh.gpus, "gpus");
  differs(running.op_timeout != fresh.op_timeout, "op_timeout_ms");
  differs(running.session_idle_timeout != fresh.session_idle_timeout, "session_idle_timeout_ms");
  differs(running.drain_timeout != fresh.drain_timeout, "drain_timeout_ms");
  differs(GroupShapes(running) != GroupShapes(fresh), "group");
  const ClusterSettings& a = running.cluster;
  const ClusterSettings& b = fresh.cluster;
  differs(a.node_rank != b.node_rank || a.nodes != b.nodes || a.leader != b.leader ||
              a.listen != b.listen || a.address != b.address || a.token_file != b.token_file ||
              a.bootstrap_timeout != b.bootstrap_timeout || a.peer_timeout != b.peer_timeout,
          "cluster");
  return plan;
}

}  // namespace epd::app
