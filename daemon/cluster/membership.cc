#include "daemon/cluster/membership.h"

#include <charconv>

namespace epd::cluster {

Membership::Membership(int nodes, int ranks_per_node, std::string leader_address,
                       std::chrono::milliseconds peer_timeout)
    : nodes_(nodes), ranks_per_node_(ranks_per_node), peer_timeout_(peer_timeout),
      members_(nodes) {
  members_[0].address = std::move(leader_address);
  members_[0].joins = 1;
  members_[0].last_seen = Clock::now();
}

bool Membership::UpLocked(const Member& member, Clock::time_point now) const {
  return member.joins > 0 && now - member.last_seen < peer_timeout_;
}

StatusOr<JoinOutcome> Membership::Join(int node_rank, int nodes, int ranks_per_node,
                                       const std::string& address, uint64_t incarnation,
                                       const std::map<std::string, int64_t>& floors) {
  if (nodes != nodes_) {
    return FailedPreconditionError(
        "node count mismatch: node {} runs with nodes = {}, the leader with nodes = {}",
        node_rank, nodes, nodes_);
  }
  if (ranks_per_node != ranks_per_node_) {
    return FailedPreconditionError(
        "local rank count mismatch: node {} has {} ranks, the leader {}; every node of a "
        "deployment has the same number of ranks",
        node_rank, ranks_per_node, ranks_per_node_);
  }
  if (node_rank == 0) {
    return AlreadyExistsError("duplicate node rank 0: the leader at {} is node 0",
                              members_[0].address);
  }
  if (node_rank < 0 || node_rank >= nodes_) {
    return InvalidArgumentError("node_rank = {} is outside [1, nodes = {})", node_rank, nodes_);
  }
  std::lock_guard lock(mutex_);
  Member& member = members_[node_rank];
  const auto now = Clock::now();
  if (member.joins > 0 && member.incarnation != incarnation && UpLocked(member, now)) {
    const auto silent =
        std::chrono::duration_cast<std::chrono::milliseconds>(now - member.last_seen).count();
    return AlreadyExistsError(
        "duplicate node rank {}: the daemon at {} holds it and was heard {} ms ago (a restarted "
        "node may join once its predecessor was silent for {} ms)",
        node_rank, member.address, silent, peer_timeout_.count());
  }
  JoinOutcome outcome;
  outcome.rejoined = member.joins > 0 && member.incarnation != incarnation;
  if (outcome.rejoined) {
    // A restarted daemon: its predecessor's groups went with it.
    std::vector<std::string> used;
    for (const auto& [key, users] : users_) {
      if (users.count(node_rank) > 0) used.push_back(key);
    }
    for (const std::string& key : used) ReleaseLocked(key, node_rank);
  }
  for (const auto& [key, value] : floors) {
    MaxLocked(key, value);
    users_[key].insert(node_rank);
  }
  if (member.incarnation != incarnation || member.joins == 0) ++member.joins;
  member.address = address;
  member.incarnation = incarnation;
  member.last_seen = now;
  return outcome;
}

Status Membership::Heartbeat(int node_rank, uint64_t incarnation) {
  std::lock_guard lock(mutex_);
  if (node_rank <= 0 || node_rank >= nodes_ || members_[node_rank].joins == 0 ||
      members_[node_rank].incarnation != incarnation) {
    return FailedPreconditionError("node {} is not a member of this leader's cluster; join first",
                                   node_rank);
  }
  members_[node_rank].last_seen = Clock::now();
  return OkStatus();
}

ClusterView Membership::View() const {
  std::lock_guard lock(mutex_);
  ClusterView view;
  view.nodes = nodes_;
  view.ranks_per_node = ranks_per_node_;
  view.leader = members_[0].address;
  view.store_keys = store_.size();
  view.refused_calls = refused_calls_.load(std::memory_order_relaxed);
  const auto now = Clock::now();
  for (int n = 0; n < nodes_; ++n) {
    const Member& member = members_[n];
    ClusterMember out;
    out.node_rank = n;
    out.address = member.address;
    out.joins = member.joins;
    if (n == 0) {
      out.state = NodeState::kUp;
    } else if (member.joins == 0) {
      out.state = NodeState::kAbsent;
    } else {
      out.state = UpLocked(member, now) ? NodeState::kUp : NodeState::kDown;
      out.last_seen_ms_ago = static_cast<uint64_t>(
          std::chrono::duration_cast<std::chrono::milliseconds>(now - member.last_seen).count());
    }
    view.members.push_back(std::move(out));
  }
  return view;
}

void Membership::Set(const std::string& key, std::string value) {
  std::lock_guard lock(mutex_);
  store_[key] = std::move(value);
}

std::optional<std::string> Membership::Get(const std::string& key) const {
  std::lock_guard lock(mutex_);
  auto it = store_.find(key);
  if (it == store_.end()) return std::nullopt;
  return it->second;
}

int64_t Membership::Max(const std::string& key, int64_t value, int node) {
  std::lock_guard lock(mutex_);
  users_[key].insert(node);
  return MaxLocked(key, value);
}

void Membership::Retire(const std::string& key, int64_t value, int node) {
  std::lock_guard lock(mutex_);
  MaxLocked(key, value);
  ReleaseLocked(key, node);
}

void Membership::ReleaseLocked(const std::string& key, int node) {
  auto users = users_.find(key);
  if (users != users_.end()) {
    users->second.erase(node);
    if (!users->second.empty()) return;
    users_.erase(users);
  }
  // No transport uses the integer, so no node waits on or rejoins any of its generations: a
  // transport of the name formed later starts from nothing, as the name's first did.
  store_.erase(key);
  const std::optional<std::string_view> prefix = PrefixOfGenerationInteger(key);
  if (!prefix.has_value()) return;
  const std::string under = fmt::format("{}/", *prefix);
  for (auto it = store_.lower_bound(under); it != store_.end() && it->first.starts_with(under);) {
    it = store_.erase(it);
  }
}

int64_t Membership::MaxLocked(const std::string& key, int64_t value) {
  std::string& stored = store_[key];
  int64_t current = 0;
  std::from_chars(stored.data(), stored.data() + stored.size(), current);
  const int64_t result = std::max(current, value);
  stored = std::to_string(result);
  if (result > current) DropGenerationsBelowLocked(key, result);
  return result;
}

void Membership::DropGenerationsBelowLocked(std::string_view key, int64_t generation) {
  const std::optional<std::string_view> prefix = PrefixOfGenerationInteger(key);
  if (!prefix.has_value()) return;
  const std::string stem = fmt::format("{}{}", *prefix, kGenerationKeysStem);
  for (auto it = store_.lower_bound(stem); it != store_.end() && it->first.starts_with(stem);) {
    const std::string_view rest = std::string_view(it->first).substr(stem.size());
    int64_t of = 0;
    const auto [end, error] = std::from_chars(rest.data(), rest.data() + rest.size(), of);
    // Only "<stem><digits>/...": "<prefix>/generation" itself starts with the stem too.
    const bool generation_key = error == std::errc() && end != rest.data() &&
                                end != rest.data() + rest.size() && *end == '/';
    if (generation_key && of < generation) {
      it = store_.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace epd::cluster
