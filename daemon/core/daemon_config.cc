// The daemon's settings from its TOML config file (top level, [limits], [cluster]; [[group]]
// in group_decls_toml.cc) and their checks against each other and the node.
#include "daemon/core/daemon_config.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <utility>

#include "daemon/core/group_decls_toml.h"
#include "daemon/core/toml_reader.h"

namespace epd {
namespace {

constexpr std::string_view kTopLevelKeys[] = {"listen",
                                              "tcp_listen",
                                              "metrics_listen",
                                              "metrics_group_retention_ms",
                                              "backend",
                                              "cpu_ranks",
                                              "gpus",
                                              "log_level",
                                              "op_timeout_ms",
                                              "session_idle_timeout_ms",
                                              "drain_timeout_ms",
                                              "limits",
                                              "group",
                                              "cluster"};
constexpr std::string_view kClusterKeys[] = {"node_rank", "nodes",      "leader",
                                             "listen",    "address",    "token_file",
                                             "bootstrap_timeout_ms", "peer_timeout_ms"};
constexpr std::string_view kLimitKeys[] = {"buffers_per_session",       "mapped_bytes_per_session",
                                           "fences_per_session",        "handles_per_session",
                                           "groups_per_session",        "persistent_groups",
                                           "ops_in_flight_per_session", "sessions"};
constexpr std::string_view kLogLevels[] = {"trace", "debug",    "info", "warn",
                                           "error", "critical", "off"};

// [limits]: what one session may hold (session_limits.h). Every value is >= 1.
Status ParseLimits(const TomlReader& reader, const toml::node& node, SessionLimits* limits) {
  const auto* table = node.as_table();
  if (table == nullptr) return reader.Error(node, "limits", "must be a table ([limits])");
  EPD_RETURN_IF_ERROR(reader.CheckKeys(*table, "limits.", kLimitKeys));
  for (const auto& [key_node, value_node] : *table) {
    const std::string key = fmt::format("limits.{}", key_node.str());
    const auto* value = value_node.as_integer();
    if (value == nullptr) {
      return reader.Error(value_node, key,
                          fmt::format("must be an integer, not {}", TomlTypeName(value_node)));
    }
    if (value->get() < 1) {
      return reader.Error(value_node, key, fmt::format("= {} must be >= 1", value->get()));
    }
    const auto limit = static_cast<uint64_t>(value->get());
    const std::string_view name = key_node.str();
    if (name == "buffers_per_session") limits->buffers = limit;
    if (name == "mapped_bytes_per_session") limits->mapped_bytes = limit;
    if (name == "fences_per_session") limits->fences = limit;
    if (name == "handles_per_session") limits->handles = limit;
    if (name == "groups_per_session") limits->groups = limit;
    if (name == "persistent_groups") limits->persistent_groups = limit;
    if (name == "ops_in_flight_per_session") limits->ops_in_flight = limit;
    if (name == "sessions") limits->sessions = limit;
  }
  return OkStatus();
}

Status ParseCluster(const TomlReader& reader, const toml::node& node, ClusterSettings* cluster) {
  const auto* table = node.as_table();
  if (table == nullptr) return reader.Error(node, "cluster", "must be a table ([cluster])");
  EPD_RETURN_IF_ERROR(reader.CheckKeys(*table, "cluster.", kClusterKeys));
  for (const auto& [key_node, value] : *table) {
    const std::string_view name = key_node.str();
    const std::string key = fmt::format("cluster.{}", name);
    if (name == "node_rank") {
      EPD_ASSIGN_OR_RETURN(cluster->node_rank, reader.Int(value, key, 0));
    } else if (name == "nodes") {
      EPD_ASSIGN_OR_RETURN(cluster->nodes, reader.Int(value, key, 1, 4096));
    } else if (name == "leader") {
      EPD_ASSIGN_OR_RETURN(cluster->leader, reader.String(value, key));
    } else if (name == "listen") {
      EPD_ASSIGN_OR_RETURN(cluster->listen, reader.String(value, key));
    } else if (name == "address") {
      EPD_ASSIGN_OR_RETURN(cluster->address, reader.String(value, key));
    } else if (name == "token_file") {
      EPD_ASSIGN_OR_RETURN(cluster->token_file, reader.String(value, key));
    } else if (name == "bootstrap_timeout_ms") {
      EPD_ASSIGN_OR_RETURN(cluster->bootstrap_timeout, reader.Millis(value, key, 1));
    } else if (name == "peer_timeout_ms") {
      EPD_ASSIGN_OR_RETURN(cluster->peer_timeout, reader.Millis(value, key, 1));
    }
  }
  return OkStatus();
}

Status ParseTopLevel(const TomlReader& reader, const toml::table& root, DaemonConfig* config) {
  EPD_RETURN_IF_ERROR(reader.CheckKeys(root, "", kTopLevelKeys));
  for (const auto& [key_node, node] : root) {
    const std::string_view key = key_node.str();
    if (key == "listen") {
      EPD_ASSIGN_OR_RETURN(config->listen, reader.String(node, key));
    } else if (key == "tcp_listen") {
      EPD_ASSIGN_OR_RETURN(config->tcp_listen, reader.String(node, key));
    } else if (key == "metrics_listen") {
      EPD_ASSIGN_OR_RETURN(config->metrics_listen, reader.String(node, key));
    } else if (key == "metrics_group_retention_ms") {
      EPD_ASSIGN_OR_RETURN(config->metrics_group_retention, reader.Millis(node, key, 0));
    } else if (key == "backend") {
      EPD_ASSIGN_OR_RETURN(config->backend, reader.Enum<BackendKind>(node, key, ParseBackendKind));
    } else if (key == "cpu_ranks") {
      EPD_ASSIGN_OR_RETURN(config->cpu_ranks, reader.Int(node, key, 1, kMaxCpuRanks));
    } else if (key == "gpus") {
      EPD_ASSIGN_OR_RETURN(config->gpus, reader.IntArray(node, key, 0));
    } else if (key == "log_level") {
      EPD_ASSIGN_OR_RETURN(config->log_level, reader.String(node, key));
    } else if (key == "op_timeout_ms") {
      EPD_ASSIGN_OR_RETURN(config->op_timeout, reader.Millis(node, key, 1));
    } else if (key == "session_idle_timeout_ms") {
      EPD_ASSIGN_OR_RETURN(config->session_idle_timeout, reader.Millis(node, key, 1));
    } else if (key == "drain_timeout_ms") {
      EPD_ASSIGN_OR_RETURN(config->drain_timeout, reader.Millis(node, key, 0));
    } else if (key == "limits") {
      EPD_RETURN_IF_ERROR(ParseLimits(reader, node, &config->limits));
    } else if (key == "group") {
      EPD_RETURN_IF_ERROR(ParseGroups(reader, node, config));
    } else if (key == "cluster") {
      EPD_RETURN_IF_ERROR(ParseCluster(reader, node, &config->cluster));
    }
  }
  // Scalar contradictions (e.g. a non-loopback tcp_listen), reported at the key's line.
  Status settings = ValidateDaemonSettings(*config);
  if (settings.ok()) return OkStatus();
  for (const auto& [key_node, node] : root) {
    if (settings.message().rfind(std::string(key_node.str()) + " ", 0) == 0) {
      return reader.At(node, settings.message());
    }
  }
  return settings.WithContext(reader.source());
}

}  // namespace

std::string_view BackendKindName(BackendKind kind) {
  switch (kind) {
    case BackendKind::kAuto:
      return "auto";
    case BackendKind::kCuda:
      return "cuda";
    case BackendKind::kCpu:
      return "cpu";
  }
  return "?";
}

StatusOr<BackendKind> ParseBackendKind(std::string_view name) {
  for (auto kind : {BackendKind::kAuto, BackendKind::kCuda, BackendKind::kCpu}) {
    if (name == BackendKindName(kind)) return kind;
  }
  return InvalidArgumentError("unknown backend '{}' (expected auto, cuda or cpu)", name);
}

Status ValidateDaemonSettings(const DaemonConfig& config) {
  EPD_RETURN_IF_ERROR(UnixSocketPath(config.listen).status());
  if (!config.tcp_listen.empty() && !IsLoopbackAddress(config.tcp_listen)) {
    return InvalidArgumentError(
        "tcp_listen = \"{}\" is not a loopback address: the API is unauthenticated, so TCP is "
        "served only on 127.0.0.1:PORT or [::1]:PORT",
        config.tcp_listen);
  }
  if (!config.metrics_listen.empty() && !IsIpAddressWithPort(config.metrics_listen)) {
    return InvalidArgumentError(
        "metrics_listen = \"{}\" is not IP:PORT (127.0.0.1:9464 or [::1]:9464; empty: no metrics)",
        config.metrics_listen);
  }
  if (config.cpu_ranks < 1 || config.cpu_ranks > kMaxCpuRanks) {
    return InvalidArgumentError("cpu_ranks = {} is outside [1, {}]", config.cpu_ranks,
                                kMaxCpuRanks);
  }
  std::set<int> seen;
  for (int gpu : config.gpus) {
    if (gpu < 0) return InvalidArgumentError("gpus lists {}, a negative GPU index", gpu);
    if (!seen.insert(gpu).second) return InvalidArgumentError("gpus lists GPU {} twice", gpu);
  }
  if (!IsOneOf(kLogLevels, config.log_level)) {
    return InvalidArgumentError("log_level = \"{}\" is not one of {}", config.log_level,
                                JoinKeys(kLogLevels));
  }
  if (config.op_timeout.count() < 1) {
    return InvalidArgumentError("op_timeout_ms = {} must be >= 1", config.op_timeout.count());
  }
  if (config.session_idle_timeout.count() < 1) {
    return InvalidArgumentError("session_idle_timeout_ms = {} must be >= 1",
                                config.session_idle_timeout.count());
  }
  if (config.drain_timeout.count() < 0) {
    return InvalidArgumentError("drain_timeout_ms = {} must be >= 0", config.drain_timeout.count());
  }
  return OkStatus();
}

Status ValidateClusterSettings(const ClusterSettings& cluster) {
  if (!cluster.enabled()) return OkStatus();
  if (cluster.node_rank < 0 || cluster.node_rank >= cluster.nodes) {
    return InvalidArgumentError("cluster.node_rank = {} is outside [0, cluster.nodes = {})",
                                cluster.node_rank, cluster.nodes);
  }
  if (!IsIpAddressWithPort(cluster.leader)) {
    return InvalidArgumentError("cluster.leader = \"{}\" must be the leader's IP:PORT",
                                cluster.leader);
  }
  if (!cluster.listen.empty() && !IsIpAddressWithPort(cluster.listen)) {
    return InvalidArgumentError("cluster.listen = \"{}\" must be IP:PORT", cluster.listen);
  }
  if (cluster.address.empty() || IsIpAddressWithPort(cluster.address) ||
      !IsIpAddressWithPort(cluster.address + ":0")) {
    return InvalidArgumentError(
        "cluster.address = \"{}\" must be this node's IP address (no port), reachable from "
        "the other nodes",
        cluster.address);
  }
  if (cluster.token_file.empty()) {
    return InvalidArgumentError(
        "cluster.token_file is required with cluster.nodes = {}: daemons prove with the "
        "deployment token that they belong to one deployment",
        cluster.nodes);
  }
  return OkStatus();
}

void ApplyClusterSpan(DaemonConfig* config, int ranks_per_node) {
  const ClusterSettings& cluster = config->cluster;
  for (PersistentGroupDecl& decl : config->groups) {
    if (!decl.config.spans_nodes) continue;
    decl.config.span = GroupConfig::Span{cluster.node_rank, cluster.nodes, ranks_per_node};
    for (PersistentHandleDecl& handle : decl.handles) {
      // Handles default to every rank of the group this node hosts.
      if (handle.ranks != decl.config.ranks) continue;
      handle.ranks.clear();
      for (int g = 0; g < decl.config.world_size(); ++g) {
        const int node_rank = decl.config.NodeRankOf(g);
        if (node_rank >= 0) handle.ranks.push_back(node_rank);
      }
    }
  }
}

Status CheckGroupsAgainstNode(const DaemonConfig& config, int node_ranks) {
  for (size_t i = 0; i < config.groups.size(); ++i) {
    for (const PersistentHandleDecl& handle : config.groups[i].handles) {
      for (int rank : handle.ranks) {
        if (config.groups[i].config.GroupRankOf(rank) < 0) {
          return InvalidArgumentError(
              "group[{}] (name = \"{}\"): handle '{}' lists node rank {}, which is not a member "
              "hosted by this node",
              i, config.groups[i].config.name, handle.name, rank);
        }
      }
    }
    Status valid = config.groups[i].config.Validate(node_ranks);
    if (!valid.ok()) {
      return InvalidArgumentError("group[{}] (name = \"{}\"): {} (the node has {} ranks)", i,
                                  config.groups[i].config.name, valid.message(), node_ranks);
    }
  }
  return OkStatus();
}

StatusOr<DaemonConfig> ParseDaemonConfig(std::string_view toml_text, std::string_view source_name) {
  toml::table root;
  try {
    root = toml::parse(toml_text, source_name);
  } catch (const toml::parse_error& error) {
    return InvalidArgumentError("{}:{}:{}: {}", source_name, error.source().begin.line,
                                error.source().begin.column, error.description());
  }
  DaemonConfig config;
  EPD_RETURN_IF_ERROR(ParseTopLevel(TomlReader(source_name), root, &config));
  return config;
}

StatusOr<DaemonConfig> LoadDaemonConfig(const std::string& path) {
  std::error_code error;
  if (std::filesystem::is_directory(path, error)) {
    return InvalidArgumentError("config file {} is a directory", path);
  }
  std::ifstream in(path);
  if (!in) return NotFoundError("cannot read config file {}: {}", path, std::strerror(errno));
  std::stringstream text;
  text << in.rdbuf();
  return ParseDaemonConfig(text.str(), path);
}

}  // namespace epd
