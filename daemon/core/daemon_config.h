// DaemonConfig: the daemon's settings from the TOML config file (deploy/epd.toml documents
// every key), before command-line flags override them.
//
// Parsing is strict: an unknown key, a wrong type or a contradictory value is an
// INVALID_ARGUMENT that names the key (and the file and line). A config that parses may
// still name ranks the node lacks: CheckGroupsAgainstNode() tells once the backend is known.
#pragma once

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/core/group_config.h"
#include "daemon/core/session_limits.h"
#include "common/status.h"

namespace epd {

enum class BackendKind { kAuto, kCuda, kCpu };
std::string_view BackendKindName(BackendKind kind);
StatusOr<BackendKind> ParseBackendKind(std::string_view name);

// A persistent named handle declared in the config: one handle per listed node rank, all
// with the same name (a frontend of that rank attaches to it by name).
struct PersistentHandleDecl {
  std::string name;
  std::vector<int> ranks;  // node ranks, members of the group; every group rank when omitted
};

// A persistent group created at startup, with its persistent handles.
struct PersistentGroupDecl {
  GroupConfig config;  // ranks filled in (from `ranks` or 0..world_size-1)
  std::vector<PersistentHandleDecl> handles;
};

// The cpu backend's rank bound (cpu_backend.cc checks the same number).
inline constexpr int kMaxCpuRanks = 64;

// [cluster]: a multi-node deployment (README, "Multi-node"). Absent or nodes = 1: the daemon
// runs alone. The token itself is read from token_file at startup and never logged.
struct ClusterSettings {
  int node_rank = 0;
  int nodes = 1;
  std::string leader;     // IP:PORT of node 0's cluster listener
  std::string listen;     // node 0 only: where it serves the Cluster service; default: leader
  std::string address;    // this node's IP, for group transports (gloo) and the cluster view
  std::string token_file;
  std::chrono::milliseconds bootstrap_timeout{60'000};  // how long a follower tries to join
  std::chrono::milliseconds peer_timeout{3'000};        // silence after which a node is down
  bool enabled() const { return nodes > 1; }
};

struct DaemonConfig {
  std::string listen = "unix:///run/epd/epd.sock";
  std::string tcp_listen;  // empty: no TCP; else a loopback address with port
  // Prometheus /metrics (HTTP). Empty: no metrics endpoint.
  std::string metrics_listen = "127.0.0.1:9464";
  // How long a destroyed group's op series stay in /metrics (for the scrapes after it).
  std::chrono::milliseconds metrics_group_retention{300'000};
  BackendKind backend = BackendKind::kAuto;
  int cpu_ranks = 1;      // ranks of the cpu backend
  std::vector<int> gpus;  // GPU indices of the cuda backend; empty: every visible GPU
  std::string log_level = "info";
  std::chrono::milliseconds op_timeout{10'000};
  std::chrono::milliseconds session_idle_timeout{60'000};
  std::chrono::milliseconds drain_timeout{5'000};
  SessionLimits limits;  // [limits]
  std::vector<PersistentGroupDecl> groups;
  ClusterSettings cluster;
};

// Checks [cluster] (after flags override the file); the message names the key.
Status ValidateClusterSettings(const ClusterSettings& cluster);
// Gives the config's spanning groups this node's place in the cluster.
void ApplyClusterSpan(DaemonConfig* config, int ranks_per_node);

// Parses TOML text; `source_name` (a path) prefixes error messages.
StatusOr<DaemonConfig> ParseDaemonConfig(std::string_view toml_text,
                                         std::string_view source_name = "config");
StatusOr<DaemonConfig> LoadDaemonConfig(const std::string& path);

// Checks the scalar settings (after flags override the file): a usable unix socket path,
// loopback-only TCP, an IP:PORT metrics address, positive
// rank counts and timeouts, a known log level, unique GPU indices.
Status ValidateDaemonSettings(const DaemonConfig& config);

// Checks every declared group and handle against the node's rank count.
Status CheckGroupsAgainstNode(const DaemonConfig& config, int node_ranks);

// True for "127.0.0.1:PORT" and "[::1]:PORT" (PORT in 0..65535; 0 lets the kernel pick).
// Names like "localhost" are refused: they may resolve to a non-loopback address.
bool IsLoopbackAddress(std::string_view address);

// True for "A.B.C.D:PORT" and "[IPv6]:PORT" (no host names).
bool IsIpAddressWithPort(std::string_view address);

// The file system path of a "unix:" address ("unix:///abs/path" or "unix:relative/path"), or
// an INVALID_ARGUMENT naming the address (`listen = ...`).
StatusOr<std::string> UnixSocketPath(const std::string& address);

}  // namespace epd
