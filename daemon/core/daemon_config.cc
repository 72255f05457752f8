#include "daemon/core/daemon_config.h"

#include <toml++/toml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <climits>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <utility>

namespace epd {
namespace {

constexpr int64_t kMaxTimeoutMs = 24LL * 3600 * 1000;  // a day: larger values are typos

constexpr std::string_view kTopLevelKeys[] = {"listen",
                                              "tcp_listen",
                                              "metrics_listen",
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
constexpr std::string_view kLimitKeys[] = {"buffers_per_session",  "mapped_bytes_per_session",
                                           "fences_per_session",   "handles_per_session",
                                           "groups_per_session",   "persistent_groups",
                                           "ops_in_flight_per_session"};
constexpr std::string_view kGroupKeys[] = {
    "name",  "ranks", "world_size", "experts",   "hidden",          "max_tokens_per_rank",
    "top_k", "dtype", "layout",     "algorithm", "expert_capacity", "handle",
    "dispatch_dtype", "scale_format", "recv_capacity", "sm_budget", "spans_nodes"};
constexpr std::string_view kHandleKeys[] = {"name", "ranks"};
constexpr std::string_view kLogLevels[] = {"trace", "debug",    "info", "warn",
                                           "error", "critical", "off"};

template <size_t N>
std::string JoinKeys(const std::string_view (&keys)[N]) {
  std::string out;
  for (auto key : keys) out += (out.empty() ? "" : ", ") + std::string(key);
  return out;
}

template <size_t N>
bool Contains(const std::string_view (&keys)[N], std::string_view key) {
  return std::find(std::begin(keys), std::end(keys), key) != std::end(keys);
}

std::string_view TypeName(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::table:
      return "table";
    case toml::node_type::array:
      return "array";
    case toml::node_type::string:
      return "string";
    case toml::node_type::integer:
      return "integer";
    case toml::node_type::floating_point:
      return "float";
    case toml::node_type::boolean:
      return "boolean";
    case toml::node_type::date:
      return "date";
    case toml::node_type::time:
      return "time";
    case toml::node_type::date_time:
      return "date-time";
    default:
      return "nothing";
  }
}

// Reads typed values out of the toml tree; every error names the source, line and key path.
class Reader {
 public:
  explicit Reader(std::string_view source) : source_(source) {}

  const std::string& source() const { return source_; }

  // "source:line: message" (toml++ records the line of every node).
  Status At(const toml::node& node, std::string_view message) const {
    const auto line = node.source().begin.line;
    if (line == 0) return InvalidArgumentError("{}: {}", source_, message);
    return InvalidArgumentError("{}:{}: {}", source_, line, message);
  }
  Status Error(const toml::node& node, std::string_view key, std::string_view problem) const {
    return At(node, fmt::format("{} {}", key, problem));
  }

  template <size_t N>
  Status CheckKeys(const toml::table& table, std::string_view prefix,
                   const std::string_view (&known)[N]) const {
    for (const auto& [key, node] : table) {
      if (!Contains(known, key.str())) {
        return Error(node, fmt::format("{}{}", prefix, key.str()),
                     fmt::format("is not a known key (known: {})", JoinKeys(known)));
      }
    }
    return OkStatus();
  }

  StatusOr<std::string> String(const toml::node& node, std::string_view key) const {
    if (const auto* value = node.as_string()) return value->get();
    return Error(node, key, fmt::format("must be a string, not {}", TypeName(node)));
  }

  StatusOr<int> Int(const toml::node& node, std::string_view key, int64_t min,
                    int64_t max = INT_MAX) const {
    const auto* value = node.as_integer();
    if (value == nullptr) {
      return Error(node, key, fmt::format("must be an integer, not {}", TypeName(node)));
    }
    if (value->get() < min || value->get() > max) {
      return Error(node, key, fmt::format("= {} is outside [{}, {}]", value->get(), min, max));
    }
    return static_cast<int>(value->get());
  }

  StatusOr<std::chrono::milliseconds> Millis(const toml::node& node, std::string_view key,
                                             int64_t min) const {
    const auto* value = node.as_integer();
    if (value == nullptr) {
      return Error(node, key, fmt::format("must be an integer, not {}", TypeName(node)));
    }
    if (value->get() < min || value->get() > kMaxTimeoutMs) {
      return Error(node, key,
                   fmt::format("= {} is outside [{}, {}] ms", value->get(), min, kMaxTimeoutMs));
    }
    return std::chrono::milliseconds(value->get());
  }

  StatusOr<std::vector<int>> IntArray(const toml::node& node, std::string_view key, int64_t min,
                                      int64_t max = INT_MAX) const {
    const auto* array = node.as_array();
    if (array == nullptr) {
      return Error(node, key, fmt::format("must be an array of integers, not {}", TypeName(node)));
    }
    std::vector<int> out;
    for (size_t i = 0; i < array->size(); ++i) {
      EPD_ASSIGN_OR_RETURN(int value, Int((*array)[i], fmt::format("{}[{}]", key, i), min, max));
      out.push_back(value);
    }
    return out;
  }

  // Applies a dtype/layout/algorithm parser and keeps the key in its error.
  template <typename T, typename Parse>
  StatusOr<T> Enum(const toml::node& node, std::string_view key, Parse parse) const {
    EPD_ASSIGN_OR_RETURN(std::string text, String(node, key));
    auto parsed = parse(text);
    if (!parsed.ok())
      return Error(node, key, fmt::format("= \"{}\": {}", text, parsed.status().message()));
    return *parsed;
  }

 private:
  std::string source_;
};

Status ParseHandle(const Reader& reader, const toml::node& node, std::string_view key,
                   const GroupConfig& group, PersistentHandleDecl* handle) {
  const auto* table = node.as_table();
  if (table == nullptr) return reader.Error(node, key, "must be a table ([[group.handle]])");
  EPD_RETURN_IF_ERROR(reader.CheckKeys(*table, fmt::format("{}.", key), kHandleKeys));
  const auto* name = table->get("name");
  if (name == nullptr) return reader.Error(node, fmt::format("{}.name", key), "is required");
  EPD_ASSIGN_OR_RETURN(handle->name, reader.String(*name, fmt::format("{}.name", key)));
  if (handle->name.empty() || handle->name.size() > 128) {
    return reader.Error(*name, fmt::format("{}.name", key), "must have 1 to 128 characters");
  }
  handle->ranks = group.ranks;  // a spanning group: those of this node (ApplyClusterSpan)
  if (const auto* ranks = table->get("ranks")) {
    const std::string ranks_key = fmt::format("{}.ranks", key);
    EPD_ASSIGN_OR_RETURN(handle->ranks, reader.IntArray(*ranks, ranks_key, 0));
    if (handle->ranks.empty()) return reader.Error(*ranks, ranks_key, "must not be empty");
    std::set<int> seen;
    for (int rank : handle->ranks) {
      // A spanning group's handles name node ranks; CheckGroupsAgainstNode checks them.
      if (!group.spans_nodes && group.GroupRankOf(rank) < 0) {
        return reader.Error(
            *ranks, ranks_key,
            fmt::format("lists rank {}, which is not a member of group '{}'", rank, group.name));
      }
      if (!seen.insert(rank).second) {
        return reader.Error(*ranks, ranks_key, fmt::format("lists rank {} twice", rank));
      }
    }
  }
  return OkStatus();
}

Status ParseGroup(const Reader& reader, const toml::node& node, std::string_view key,
                  PersistentGroupDecl* decl) {
  const auto* table = node.as_table();
  if (table == nullptr) return reader.Error(node, key, "must be a table ([[group]])");
  EPD_RETURN_IF_ERROR(reader.CheckKeys(*table, fmt::format("{}.", key), kGroupKeys));
  GroupConfig& config = decl->config;
  auto field = [&](std::string_view name) { return fmt::format("{}.{}", key, name); };
  auto required = [&](std::string_view name) -> StatusOr<const toml::node*> {
    const auto* child = table->get(name);
    if (child == nullptr) return reader.Error(node, field(name), "is required");
    return child;
  };

  EPD_ASSIGN_OR_RETURN(const toml::node* name, required("name"));
  EPD_ASSIGN_OR_RETURN(config.name, reader.String(*name, field("name")));

  const auto* ranks = table->get("ranks");
  const auto* world_size = table->get("world_size");
  if (ranks != nullptr) {
    EPD_ASSIGN_OR_RETURN(config.ranks, reader.IntArray(*ranks, field("ranks"), 0));
  }
  if (world_size != nullptr) {
    EPD_ASSIGN_OR_RETURN(int world, reader.Int(*world_size, field("world_size"), 1));
    if (ranks != nullptr && world != config.world_size()) {
      return reader.Error(
          *world_size, field("world_size"),
          fmt::format("= {} contradicts ranks, which lists {} ranks", world, config.world_size()));
    }
    if (ranks == nullptr) {
      for (int r = 0; r < world; ++r) config.ranks.push_back(r);
    }
  }
  if (ranks == nullptr && world_size == nullptr) {
    return reader.Error(node, field("ranks"), "or world_size is required");
  }

  EPD_ASSIGN_OR_RETURN(const toml::node* experts, required("experts"));
  EPD_ASSIGN_OR_RETURN(config.experts, reader.Int(*experts, field("experts"), 1));
  EPD_ASSIGN_OR_RETURN(const toml::node* hidden, required("hidden"));
  EPD_ASSIGN_OR_RETURN(config.hidden, reader.Int(*hidden, field("hidden"), 1));
  EPD_ASSIGN_OR_RETURN(const toml::node* tokens, required("max_tokens_per_rank"));
  EPD_ASSIGN_OR_RETURN(config.max_tokens_per_rank,
                       reader.Int(*tokens, field("max_tokens_per_rank"), 1));
  EPD_ASSIGN_OR_RETURN(const toml::node* top_k, required("top_k"));
  EPD_ASSIGN_OR_RETURN(config.top_k, reader.Int(*top_k, field("top_k"), 1));
  if (const auto* dtype = table->get("dtype")) {
    EPD_ASSIGN_OR_RETURN(config.dtype, reader.Enum<DType>(*dtype, field("dtype"), ParseDType));
  }
  if (const auto* layout = table->get("layout")) {
    EPD_ASSIGN_OR_RETURN(config.layout, reader.Enum<Layout>(*layout, field("layout"), ParseLayout));
  }
  if (const auto* algorithm = table->get("algorithm")) {
    EPD_ASSIGN_OR_RETURN(config.algorithm,
                         reader.Enum<Algorithm>(*algorithm, field("algorithm"), ParseAlgorithm));
  }
  if (const auto* capacity = table->get("expert_capacity")) {
    EPD_ASSIGN_OR_RETURN(config.expert_capacity,
                         reader.Int(*capacity, field("expert_capacity"), 0));
  }
  if (const auto* payload = table->get("dispatch_dtype")) {
    // The token dtype's own name means "no conversion", like leaving the key out.
    const DType token_dtype = config.dtype;
    auto parse = [token_dtype](std::string_view name) -> StatusOr<DispatchFormat> {
      if (name == DTypeName(token_dtype)) return DispatchFormat::kTokenDType;
      if (name == "fp8_e4m3") return DispatchFormat::kFp8E4m3;
      return InvalidArgumentError("expected the token dtype \"{}\" or \"fp8_e4m3\"",
                                  DTypeName(token_dtype));
    };
    EPD_ASSIGN_OR_RETURN(config.dispatch_format,
                         reader.Enum<DispatchFormat>(*payload, field("dispatch_dtype"), parse));
  }
  if (const auto* scales = table->get("scale_format")) {
    EPD_ASSIGN_OR_RETURN(
        config.scale_format,
        reader.Enum<ScaleFormat>(*scales, field("scale_format"), ParseScaleFormat));
  }
  if (const auto* rows = table->get("recv_capacity")) {
    EPD_ASSIGN_OR_RETURN(config.recv_capacity, reader.Int(*rows, field("recv_capacity"), 0));
  }
  if (const auto* sms = table->get("sm_budget")) {
    EPD_ASSIGN_OR_RETURN(config.sm_budget, reader.Int(*sms, field("sm_budget"), 0));
  }
  if (const auto* spans = table->get("spans_nodes")) {
    const auto* flag = spans->as_boolean();
    if (flag == nullptr) {
      return reader.Error(*spans, field("spans_nodes"),
                          fmt::format("must be a boolean, not {}", TypeName(*spans)));
    }
    config.spans_nodes = flag->get();
  }
  config.ResolveAlgorithm();
  // Every check that does not depend on the node's rank count (CheckGroupsAgainstNode does;
  // for a spanning group also on the cluster's size, known once [cluster] and flags are read).
  GroupConfig shape = config;
  shape.spans_nodes = false;
  Status valid = shape.Validate(INT_MAX);
  if (!valid.ok()) return reader.Error(node, key, fmt::format("is invalid: {}", valid.message()));

  if (const auto* handles = table->get("handle")) {
    const auto* array = handles->as_array();
    if (array == nullptr) {
      return reader.Error(*handles, field("handle"),
                          "must be an array of tables ([[group.handle]])");
    }
    for (size_t i = 0; i < array->size(); ++i) {
      PersistentHandleDecl handle;
      EPD_RETURN_IF_ERROR(
          ParseHandle(reader, (*array)[i], fmt::format("{}.handle[{}]", key, i), config, &handle));
      decl->handles.push_back(std::move(handle));
    }
  }
  return OkStatus();
}

Status ParseGroups(const Reader& reader, const toml::node& node, DaemonConfig* config) {
  const auto* array = node.as_array();
  if (array == nullptr)
    return reader.Error(node, "group", "must be an array of tables ([[group]])");
  std::map<std::string, size_t> group_index;
  std::map<std::pair<int, std::string>, std::string> handle_owner;  // (rank, name) -> key
  for (size_t i = 0; i < array->size(); ++i) {
    const std::string key = fmt::format("group[{}]", i);
    PersistentGroupDecl decl;
    EPD_RETURN_IF_ERROR(ParseGroup(reader, (*array)[i], key, &decl));
    auto [it, inserted] = group_index.emplace(decl.config.name, i);
    if (!inserted) {
      return reader.Error(
          (*array)[i], key + ".name",
          fmt::format("= \"{}\" duplicates group[{}].name", decl.config.name, it->second));
    }
    // A frontend attaches by (its rank, name), so that pair must be unique across groups.
    for (size_t h = 0; h < decl.handles.size(); ++h) {
      const std::string handle_key = fmt::format("{}.handle[{}]", key, h);
      for (int rank : decl.handles[h].ranks) {
        auto [owner, fresh] =
            handle_owner.emplace(std::pair(rank, decl.handles[h].name), handle_key);
        if (!fresh) {
          return reader.Error((*array)[i], handle_key + ".name",
                              fmt::format("= \"{}\" on rank {} duplicates {}", decl.handles[h].name,
                                          rank, owner->second));
        }
      }
    }
    config->groups.push_back(std::move(decl));
  }
  return OkStatus();
}

// [limits]: what one session may hold (session_limits.h). Every value is >= 1.
Status ParseLimits(const Reader& reader, const toml::node& node, SessionLimits* limits) {
  const auto* table = node.as_table();
  if (table == nullptr) return reader.Error(node, "limits", "must be a table ([limits])");
  EPD_RETURN_IF_ERROR(reader.CheckKeys(*table, "limits.", kLimitKeys));
  for (const auto& [key_node, value_node] : *table) {
    const std::string key = fmt::format("limits.{}", key_node.str());
    const auto* value = value_node.as_integer();
    if (value == nullptr) {
      return reader.Error(value_node, key,
                          fmt::format("must be an integer, not {}", TypeName(value_node)));
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
  }
  return OkStatus();
}

Status ParseCluster(const Reader& reader, const toml::node& node, ClusterSettings* cluster) {
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

Status ParseTopLevel(const Reader& reader, const toml::table& root, DaemonConfig* config) {
  EPD_RETURN_IF_ERROR(reader.CheckKeys(root, "", kTopLevelKeys));
  for (const auto& [key_node, node] : root) {
    const std::string_view key = key_node.str();
    if (key == "listen") {
      EPD_ASSIGN_OR_RETURN(config->listen, reader.String(node, key));
    } else if (key == "tcp_listen") {
      EPD_ASSIGN_OR_RETURN(config->tcp_listen, reader.String(node, key));
    } else if (key == "metrics_listen") {
      EPD_ASSIGN_OR_RETURN(config->metrics_listen, reader.String(node, key));
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
  if (!Contains(kLogLevels, config.log_level)) {
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
  EPD_RETURN_IF_ERROR(ParseTopLevel(Reader(source_name), root, &config));
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
