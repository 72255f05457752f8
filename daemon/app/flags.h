// The daemon's command line: flags that override the config file's keys of the same name,
// and the resolved, validated configuration (file, then EPD_LOG_LEVEL, then flags).
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "daemon/core/daemon_config.h"

namespace epd::app {

struct Flags {
  std::string config_path;
  std::string check_config_path;  // --check-config FILE: validate and exit
  std::string listen, tcp_listen, metrics_listen, backend, gpus, log_level;
  int cpu_ranks = 0;
  int64_t op_timeout_ms = 0, session_idle_timeout_ms = 0, drain_timeout_ms = 0,
          metrics_group_retention_ms = 0;
  // [cluster]
  int node_rank = 0, nodes = 0;
  std::string leader, cluster_listen, cluster_address, cluster_token_file;
  int64_t bootstrap_timeout_ms = 0, peer_timeout_ms = 0;
};

void AddFlags(CLI::App& app, Flags* flags);

StatusOr<std::vector<int>> ParseGpuList(const std::string& text);

// The config file `config_path` (when not empty) with the given flags applied on top,
// validated. Every error is an INVALID_ARGUMENT (NOT_FOUND for a missing file) naming the
// key or flag: the caller exits 2 before anything is created.
StatusOr<DaemonConfig> ResolveConfig(const CLI::App& app, const Flags& flags,
                                     const std::string& config_path);

// A one-paragraph summary of a valid config, printed by --check-config.
std::string DescribeConfig(const DaemonConfig& config);

}  // namespace epd::app
