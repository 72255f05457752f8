// The multi-node view the core and the backends need, without gRPC (daemon/cluster/ implements
// it): which node this daemon is, the cluster's members as the leader sees them, and the
// leader's key-value store that group transports rendezvous through (docs/design.md §9).
#pragma once

#include <fmt/ranges.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/status.h"
#include "daemon/core/group_config.h"

namespace epd {

enum class NodeState { kUp, kDown, kAbsent };
constexpr std::string_view NodeStateName(NodeState state) {
  switch (state) {
    case NodeState::kUp:
      return "up";
    case NodeState::kDown:
      return "down";
    default:
      return "absent";
  }
}

struct ClusterMember {
  int node_rank = 0;
  std::string address;
  NodeState state = NodeState::kAbsent;
  uint64_t joins = 0;             // restarts + 1
  uint64_t last_seen_ms_ago = 0;  // since the leader last heard from it
  uint64_t transport_failures = 0;  // group ops this node saw fail because of that peer
  // Group payload this daemon exchanged with that node (enqueued; its own node included).
  uint64_t bytes_sent = 0, bytes_received = 0;
};

struct ClusterView {
  int node_rank = 0;
  int nodes = 1;
  int ranks_per_node = 0;
  std::string leader;
  std::vector<ClusterMember> members;  // in node-rank order
  uint64_t store_keys = 0;             // keys in the leader's store
  uint64_t refused_calls = 0;          // calls the leader's cluster port refused
};

// Implemented by daemon/cluster/cluster_node.h. Thread-safe; every call is bounded.
class ClusterStore {
 public:
  virtual ~ClusterStore() = default;
  virtual GroupConfig::Span Span() const = 0;
  // This node's address for group transports (an IP, no port).
  virtual const std::string& transport_host() const = 0;
  virtual ClusterView View() const = 0;

  virtual Status Set(const std::string& key, const std::string& value) = 0;
  // nullopt while the key is absent.
  virtual StatusOr<std::optional<std::string>> Get(const std::string& key) = 0;
  // Raises the integer at key to at least `value`; returns the stored result. This node counts
  // among the integer's users from then on.
  virtual StatusOr<int64_t> Max(const std::string& key, int64_t value) = 0;
  // This daemon no longer has a transport that uses the integer at `key` (its group ended
  // here): the leader raises it to at least `value` and counts this node out of its users;
  // once none is left, it erases the integer and every key under its prefix. Never fails nor
  // waits on the leader (a group's destructor calls it): this daemon stops carrying the
  // integer to a restarted leader (JoinRequest.floors) at once, and a follower hands the
  // retire to the leader from its heartbeat thread, once the leader answers. It drops the
  // retire when it uses the integer again first (Max) or when the leader restarted meanwhile
  // (the successor never counted this node: ended groups' integers are not carried to it).
  virtual void Retire(const std::string& key, int64_t value) = 0;

  // A group transport gave up on `node` (its connection broke or timed out): counted per peer
  // in the view and in /metrics.
  virtual void ReportTransportFailure(int node) = 0;
  // A group transport exchanged `sent` / `received` payload bytes with `node`: counted per peer
  // in the view and in /metrics.
  virtual void ReportTransportBytes(int node, uint64_t sent, uint64_t received) = 0;
};

// Before a group that spans nodes forms its transport: UNAVAILABLE naming the member nodes the
// view shows down (they were up and went silent for peer_timeout), since a formation with them
// can only time out; the group forms at an op after they are back. A node not joined yet
// (absent) is waited for as usual.
inline Status CheckNoMemberDown(const ClusterView& view, const GroupConfig& config) {
  std::vector<int> down;
  for (int r = 0; r < config.world_size(); ++r) {
    const int node = config.NodeOf(r);
    if (node == config.span.node || node >= static_cast<int>(view.members.size()) ||
        view.members[node].state != NodeState::kDown ||
        std::find(down.begin(), down.end(), node) != down.end()) {
      continue;
    }
    down.push_back(node);
  }
  if (down.empty()) return OkStatus();
  return UnavailableError(
      "group '{}': node {} {} down (silent for longer than peer_timeout_ms); the group forms "
      "again at an op after {} back",
      config.name, fmt::join(down, ", "), down.size() == 1 ? "is" : "are",
      down.size() == 1 ? "it is" : "they are");
}

// Group transports (gloo meshes, NCCL communicators) keep their keys under a prefix of their
// own ("epd/group/<name>", "epd/nccl/<name>"): "<prefix>/generation", an integer that only
// grows (Max), and generation g's keys under "<prefix>/g<g>/", among them
// "<prefix>/g<g>/formed/node<n>", set once node n formed generation g. No transport starts a
// generation below the stored one (each takes Max's result), so when the integer rises the
// leader drops the keys of the generations below it: a group re-formed for months keeps the
// store at the size of one generation.
//
// The name is one segment of the prefix ('%' and '/' in it written %25 and %2F), so a group
// named "a/g1" has no key under group "a"'s "epd/group/a/g1/".
inline std::string TransportKeyPrefix(std::string_view kind, std::string_view group_name) {
  std::string prefix = fmt::format("epd/{}/", kind);
  for (char c : group_name) {
    if (c == '%') {
      prefix += "%25";
    } else if (c == '/') {
      prefix += "%2F";
    } else {
      prefix += c;
    }
  }
  return prefix;
}

// The layout under a prefix, which the leader's pruning (daemon/cluster/membership.cc) reads
// back: "<prefix>" kGenerationIntegerSuffix, and generation g's keys under "<prefix>"
// kGenerationKeysStem "<g>/".
inline constexpr std::string_view kGenerationIntegerSuffix = "/generation";
inline constexpr std::string_view kGenerationKeysStem = "/g";
inline std::string GenerationIntegerKey(std::string_view prefix) {
  return fmt::format("{}{}", prefix, kGenerationIntegerSuffix);
}
// Its inverse: the prefix whose generation integer `key` is; nullopt for any other key.
// (No ends_with: CUDA sources that include this header build as C++17.)
inline std::optional<std::string_view> PrefixOfGenerationInteger(std::string_view key) {
  const size_t suffix = kGenerationIntegerSuffix.size();
  if (key.size() < suffix || key.substr(key.size() - suffix) != kGenerationIntegerSuffix) {
    return std::nullopt;
  }
  return key.substr(0, key.size() - suffix);
}
inline std::string GenerationKeysPrefix(std::string_view prefix, int64_t generation) {
  return fmt::format("{}{}{}/", prefix, kGenerationKeysStem, generation);
}

inline int64_t ParseGeneration(const std::optional<std::string>& text) {
  int64_t value = 0;  // absent: none formed yet
  if (text.has_value()) std::from_chars(text->data(), text->data() + text->size(), value);
  return value;
}
inline std::string FormedGenerationKey(std::string_view prefix, int64_t generation, int node) {
  return fmt::format("{}formed/node{}", GenerationKeysPrefix(prefix, generation), node);
}

// The generation a transport's first formation starts from (at least): the stored one, or the
// next when `node` formed the stored one before (an earlier instance of the group, or of the
// daemon): the peers' mesh or communicator of it names that earlier one, and its keys in the
// store are stale. When the peers noticed first, they raised it already and this node simply
// joins it.
inline StatusOr<int64_t> FirstFormationFloor(ClusterStore& store, std::string_view prefix,
                                             int node) {
  EPD_ASSIGN_OR_RETURN(std::optional<std::string> current, store.Get(GenerationIntegerKey(prefix)));
  const int64_t stored = ParseGeneration(current);
  EPD_ASSIGN_OR_RETURN(std::optional<std::string> formed,
                       store.Get(FormedGenerationKey(prefix, stored, node)));
  return formed.has_value() ? stored + 1 : stored;
}

// A transport whose group ended on this node (destroyed there, not shut down) retires the
// generation integer, raising it past the last generation it formed (`last_formed`, -1 when
// none): the leader drops that generation's keys now instead of when the name forms again, and
// once no node uses the integer (every node hosting the group ended it, or restarted), the
// integer and whatever is left under its prefix go too, so a group name used once leaves
// nothing in the store. This node stops carrying the integer to a restarted leader. Its peers
// lose nothing: their next formation went past that generation anyway (this node's fresh
// transport starts past it: FirstFormationFloor). Never waits on the leader
// (ClusterStore::Retire). A transport that formed none raises it to 0: nothing.
inline void RetireGeneration(ClusterStore& store, std::string_view prefix, int64_t last_formed) {
  store.Retire(GenerationIntegerKey(prefix), last_formed + 1);
}

// Waits until every other node hosting a rank of `config` has joined (the view shows none of
// them absent), until `deadline` or until `stopped` says so (UNAVAILABLE naming the nodes). A
// formation takes its generation only then: a leader that restarted has then heard every
// member's store floors (ClusterNode replays them as it joins), so it never hands out a
// generation a survivor used with its predecessor.
inline Status AwaitMembersJoined(const ClusterStore& store, const GroupConfig& config,
                                 std::chrono::steady_clock::time_point deadline,
                                 const std::function<bool()>& stopped) {
  for (;;) {
    const ClusterView view = store.View();
    std::vector<int> absent;
    for (int r = 0; r < config.world_size(); ++r) {
      const int node = config.NodeOf(r);
      if (node != config.span.node && node < static_cast<int>(view.members.size()) &&
          view.members[node].state == NodeState::kAbsent &&
          std::find(absent.begin(), absent.end(), node) == absent.end()) {
        absent.push_back(node);
      }
    }
    if (absent.empty()) return OkStatus();
    const bool stop = stopped && stopped();
    if (stop || std::chrono::steady_clock::now() >= deadline) {
      return UnavailableError("group '{}': node {} {} not joined the cluster{}", config.name,
                              fmt::join(absent, ", "), absent.size() == 1 ? "has" : "have",
                              stop ? " (stopped waiting)" : " in time (not started yet?)");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

}  // namespace epd
