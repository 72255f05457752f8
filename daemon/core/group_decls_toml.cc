#include "daemon/core/group_decls_toml.h"

#include <map>
#include <set>
#include <string>
#include <utility>

#include "common/limits.h"

namespace epd {
namespace {

constexpr std::string_view kGroupKeys[] = {
    "name",           "ranks",           "world_size",
    "experts",        "hidden",          "max_tokens_per_rank",
    "top_k",          "dtype",           "layout",
    "algorithm",      "expert_capacity", "handle",
    "dispatch_dtype", "scale_format",    "recv_capacity",
    "sm_budget",      "spans_nodes"};
constexpr std::string_view kHandleKeys[] = {"name", "ranks"};

Status ParseHandle(const TomlReader& reader, const toml::node& node, std::string_view key,
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

Status ParseGroup(const TomlReader& reader, const toml::node& node, std::string_view key,
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
    if (world > kMaxWorldSize) {
      return reader.Error(*world_size, field("world_size"),
                          fmt::format("= {}: a group has at most {} ranks", world, kMaxWorldSize));
    }
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
                          fmt::format("must be a boolean, not {}", TomlTypeName(*spans)));
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

}  // namespace

Status ParseGroups(const TomlReader& reader, const toml::node& node, DaemonConfig* config) {
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

}  // namespace epd
