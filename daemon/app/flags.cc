#include "daemon/app/flags.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>

namespace epd::app {

void AddFlags(CLI::App& app, Flags* flags) {
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.set_version_flag("--version", std::string("epd ") + EPD_VERSION);
  app.add_option("--config", flags->config_path, "TOML config file (deploy/epd.toml)");
  app.add_option("--check-config", flags->check_config_path,
                 "validate this config file (with the other flags applied) and exit: 0 valid, "
                 "2 invalid");
  app.add_option("--listen", flags->listen, "unix socket address (unix:///run/epd/epd.sock)");
  app.add_option("--tcp-listen", flags->tcp_listen,
                 "ALSO serve unauthenticated gRPC on 127.0.0.1:PORT or [::1]:PORT: every local "
                 "user can then open sessions, create groups and handles and run ops (no shm "
                 "registration over TCP); off by default");
  app.add_option("--metrics-listen", flags->metrics_listen,
                 "Prometheus /metrics on IP:PORT (default 127.0.0.1:9464; empty: off)");
  app.add_option("--metrics-group-retention-ms", flags->metrics_group_retention_ms,
                 "how long a destroyed group's op series stay in /metrics (default 300000)")
      ->check(CLI::Range(int64_t{0}, int64_t{86'400'000}));
  app.add_option("--backend", flags->backend, "auto, cuda or cpu")
      ->check(CLI::IsMember({"auto", "cuda", "cpu"}));
  app.add_option("--cpu-ranks", flags->cpu_ranks, "ranks of the cpu backend")
      ->check(CLI::Range(1, kMaxCpuRanks));
  app.add_option("--gpus", flags->gpus, "GPU indices of the cuda backend, e.g. 0,1");
  app.add_option("--log-level", flags->log_level, "trace, debug, info, warn, error, critical, off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));
  app.add_option("--op-timeout-ms", flags->op_timeout_ms, "bound of every device wait")
      ->check(CLI::Range(int64_t{1}, int64_t{86'400'000}));
  app.add_option("--session-idle-timeout-ms", flags->session_idle_timeout_ms,
                 "unary sessions idle this long are closed")
      ->check(CLI::Range(int64_t{1}, int64_t{86'400'000}));
  app.add_option("--drain-timeout-ms", flags->drain_timeout_ms,
                 "how long shutdown waits for in-flight ops")
      ->check(CLI::Range(int64_t{0}, int64_t{86'400'000}));
  // Multi-node ([cluster] in the config file; README, "Multi-node").
  app.add_option("--node-rank", flags->node_rank, "this daemon's node rank (0: the leader)")
      ->check(CLI::Range(0, 4095));
  app.add_option("--nodes", flags->nodes, "daemons in the deployment (1: alone)")
      ->check(CLI::Range(1, 4096));
  app.add_option("--leader", flags->leader, "the leader's cluster address, IP:PORT");
  app.add_option("--cluster-listen", flags->cluster_listen,
                 "leader only: where to serve the Cluster service (default: --leader)");
  app.add_option("--cluster-address", flags->cluster_address,
                 "this node's IP address for group transports (gloo)");
  app.add_option("--cluster-token-file", flags->cluster_token_file,
                 "file holding the deployment token (its content is never logged)");
  app.add_option("--bootstrap-timeout-ms", flags->bootstrap_timeout_ms,
                 "how long a follower tries to join the leader")
      ->check(CLI::Range(int64_t{1}, int64_t{86'400'000}));
  app.add_option("--peer-timeout-ms", flags->peer_timeout_ms,
                 "heartbeat silence after which a node counts as down")
      ->check(CLI::Range(int64_t{1}, int64_t{86'400'000}));
}

StatusOr<std::vector<int>> ParseGpuList(const std::string& text) {
  std::vector<int> gpus;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    const std::string item = text.substr(start, comma - start);
    char* end = nullptr;
    const long value = std::strtol(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || value < 0 || value > 1024) {
      return InvalidArgumentError("--gpus = \"{}\": expected GPU indices like 0,1,2", text);
    }
    gpus.push_back(static_cast<int>(value));
    start = comma + 1;
  }
  return gpus;
}

StatusOr<DaemonConfig> ResolveConfig(const CLI::App& app, const Flags& flags,
                                     const std::string& config_path) {
  DaemonConfig config;
  if (!config_path.empty()) {
    EPD_ASSIGN_OR_RETURN(config, LoadDaemonConfig(config_path));
  }
  auto given = [&](const char* name) { return app.count(name) > 0; };
  if (given("--listen")) config.listen = flags.listen;
  if (given("--tcp-listen")) config.tcp_listen = flags.tcp_listen;
  if (given("--metrics-listen")) config.metrics_listen = flags.metrics_listen;
  if (given("--metrics-group-retention-ms")) {
    config.metrics_group_retention = std::chrono::milliseconds(flags.metrics_group_retention_ms);
  }
  if (given("--backend")) {
    EPD_ASSIGN_OR_RETURN(config.backend, ParseBackendKind(flags.backend));
  }
  if (given("--cpu-ranks")) config.cpu_ranks = flags.cpu_ranks;
  if (given("--gpus")) {
    EPD_ASSIGN_OR_RETURN(config.gpus, ParseGpuList(flags.gpus));
  }
  // Log level: flag, then EPD_LOG_LEVEL, then the config file.
  if (given("--log-level")) {
    config.log_level = flags.log_level;
  } else if (const char* env = std::getenv("EPD_LOG_LEVEL"); env != nullptr && *env != '\0') {
    config.log_level = env;
  }
  if (given("--op-timeout-ms")) config.op_timeout = std::chrono::milliseconds(flags.op_timeout_ms);
  if (given("--session-idle-timeout-ms")) {
    config.session_idle_timeout = std::chrono::milliseconds(flags.session_idle_timeout_ms);
  }
  if (given("--drain-timeout-ms")) {
    config.drain_timeout = std::chrono::milliseconds(flags.drain_timeout_ms);
  }
  ClusterSettings& cluster = config.cluster;
  if (given("--node-rank")) cluster.node_rank = flags.node_rank;
  if (given("--nodes")) cluster.nodes = flags.nodes;
  if (given("--leader")) cluster.leader = flags.leader;
  if (given("--cluster-listen")) cluster.listen = flags.cluster_listen;
  if (given("--cluster-address")) cluster.address = flags.cluster_address;
  if (given("--cluster-token-file")) cluster.token_file = flags.cluster_token_file;
  if (given("--bootstrap-timeout-ms")) {
    cluster.bootstrap_timeout = std::chrono::milliseconds(flags.bootstrap_timeout_ms);
  }
  if (given("--peer-timeout-ms")) {
    cluster.peer_timeout = std::chrono::milliseconds(flags.peer_timeout_ms);
  }
  Status valid = ValidateDaemonSettings(config);
  if (valid.ok()) valid = ValidateClusterSettings(cluster);
  if (!valid.ok()) {
    // Settings are checked once merged, so the message says where each may have come from.
    return valid.WithContext(config_path.empty()
                                 ? std::string("invalid setting (flag)")
                                 : fmt::format("invalid setting ({} or a flag)", config_path));
  }
  return config;
}

std::string DescribeConfig(const DaemonConfig& config) {
  std::string groups;
  for (const auto& group : config.groups) {
    groups += fmt::format("\n  group '{}': {} ranks, {} named handle(s)", group.config.name,
                          group.config.world_size(), group.handles.size());
  }
  const std::string cluster =
      config.cluster.enabled()
          ? fmt::format(", node {} of {} (leader {})", config.cluster.node_rank,
                        config.cluster.nodes, config.cluster.leader)
          : "";
  return fmt::format(
      "listen {}, tcp_listen {}, metrics_listen {}, backend {}, log_level {}, op_timeout_ms {}{}, "
      "{} persistent group(s){}",
      config.listen, config.tcp_listen.empty() ? "off" : config.tcp_listen,
      config.metrics_listen.empty() ? "off" : config.metrics_listen,
      BackendKindName(config.backend), config.log_level, config.op_timeout.count(), cluster,
      config.groups.size(), groups);
}

}  // namespace epd::app
