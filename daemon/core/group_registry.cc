#include "daemon/core/group_registry.h"

#include "daemon/core/log.h"

namespace epd {

GroupMembership& GroupMembership::operator=(GroupMembership&& other) noexcept {
  if (this != &other) {
    Leave();
    group_ = std::move(other.group_);
    registry_ = std::move(other.registry_);
  }
  return *this;
}

void GroupMembership::Leave() {
  if (group_ == nullptr) return;
  std::shared_ptr<Group> group = std::move(group_);
  group_ = nullptr;
  std::shared_ptr<GroupRegistry> registry = std::move(registry_);
  registry->Leave(group);
}

std::shared_ptr<GroupRegistry> GroupRegistry::Create(Releaser release) {
  return std::shared_ptr<GroupRegistry>(new GroupRegistry(std::move(release)));
}

void GroupRegistry::DetachReleaser() {
  std::lock_guard lock(mutex_);
  release_ = nullptr;
}

void GroupRegistry::Drop(Released released) {
  if (released.empty()) return;
  Releaser release;
  {
    std::lock_guard lock(mutex_);
    release = release_;
  }
  if (release) release(std::move(released));
}

StatusOr<std::shared_ptr<Group>> GroupRegistry::Find(std::string_view name) const {
  std::lock_guard lock(mutex_);
  auto it = groups_.find(name);
  if (it == groups_.end()) return NotFoundError("group '{}' does not exist", name);
  return it->second;
}

StatusOr<std::shared_ptr<Group>> GroupRegistry::FindSameShape(const GroupConfig& config) const {
  std::lock_guard lock(mutex_);
  auto it = groups_.find(config.name);
  if (it == groups_.end()) return std::shared_ptr<Group>();
  if (!it->second->config.SameShape(config)) {
    return AlreadyExistsError("group '{}' exists with a different configuration: {}",
                              config.name, it->second->config.ToString());
  }
  return it->second;
}

Status GroupRegistry::Add(std::shared_ptr<Group> group) {
  std::lock_guard lock(mutex_);
  const std::string& name = group->config.name;
  if (groups_.count(name) != 0) {
    return AlreadyExistsError("group '{}' was created concurrently", name);
  }
  groups_.emplace(name, std::move(group));
  return OkStatus();
}

StatusOr<GroupMembership> GroupRegistry::Join(const std::shared_ptr<Group>& group) {
  std::lock_guard lock(mutex_);
  auto it = groups_.find(group->config.name);
  if (it == groups_.end() || it->second != group) {
    return NotFoundError("group '{}' was destroyed", group->config.name);
  }
  ++group->members;
  return GroupMembership(shared_from_this(), group);
}

void GroupRegistry::Leave(const std::shared_ptr<Group>& group) {
  Released released;
  {
    std::lock_guard lock(mutex_);
    if (--group->members > 0 || !group->orphaned) return;
    auto it = groups_.find(group->config.name);
    if (it != groups_.end() && it->second == group) {
      EPD_LOG(kCore, info, "group '{}' destroyed with its last handle", group->config.name);
      released.push_back(std::move(it->second));
      groups_.erase(it);
    }
  }
  Drop(std::move(released));
}

GroupRegistry::Counts GroupRegistry::CountFor(std::optional<SessionId> owner) const {
  std::lock_guard lock(mutex_);
  Counts counts;
  for (const auto& [name, group] : groups_) {
    if (group->persistent) ++counts.persistent;
    if (!group->persistent && owner.has_value() && group->owner == *owner) ++counts.owned;
  }
  return counts;
}

Status GroupRegistry::Destroy(std::string_view name, SessionId caller, int64_t caller_uid) {
  Released released;
  {
    std::lock_guard lock(mutex_);
    auto it = groups_.find(name);
    if (it == groups_.end()) return NotFoundError("group '{}' does not exist", name);
    const Group& group = *it->second;
    if (group.persistent) {
      if (group.creator_uid != caller_uid) {
        return PermissionDeniedError(
            "group '{}' is persistent and was not created by this user's session: only its "
            "creator's user (or a daemon restart, for config groups) removes it",
            name);
      }
    } else if (group.owner != caller) {
      return PermissionDeniedError("group '{}' was created by another session", name);
    }
    if (it->second->members > 0) {
      return FailedPreconditionError("group '{}' still has {} handles", name,
                                     it->second->members);
    }
    released.push_back(std::move(it->second));
    groups_.erase(it);
  }
  Drop(std::move(released));
  return OkStatus();
}

void GroupRegistry::ReleaseOwnedBy(SessionId owner) {
  Released released;
  {
    std::lock_guard lock(mutex_);
    for (auto it = groups_.begin(); it != groups_.end();) {
      Group& group = *it->second;
      if (owner == 0 || group.owner != owner || group.persistent) {
        ++it;
        continue;
      }
      group.owner = 0;
      if (group.members == 0) {
        EPD_LOG(kCore, info, "group '{}' destroyed with its session", group.config.name);
        released.push_back(std::move(it->second));
        it = groups_.erase(it);
        continue;
      }
      group.orphaned = true;
      ++it;
    }
  }
  Drop(std::move(released));
}

std::vector<GroupSummary> GroupRegistry::List() const {
  std::lock_guard lock(mutex_);
  std::vector<GroupSummary> out;
  for (const auto& [name, group] : groups_) {
    out.push_back(GroupSummary{group->config, group->persistent, group->members,
                               group->backend != nullptr ? group->backend->transport()
                                                         : std::vector<RankTransportState>{}});
  }
  return out;
}

std::vector<std::shared_ptr<Group>> GroupRegistry::All() const {
  std::lock_guard lock(mutex_);
  std::vector<std::shared_ptr<Group>> out;
  for (const auto& [name, group] : groups_) out.push_back(group);
  return out;
}

int GroupRegistry::members(std::string_view name) const {
  std::lock_guard lock(mutex_);
  auto it = groups_.find(name);
  return it == groups_.end() ? -1 : it->second->members;
}

void GroupRegistry::Clear() {
  Released released;
  {
    std::lock_guard lock(mutex_);
    for (auto& [name, group] : groups_) released.push_back(std::move(group));
    groups_.clear();
  }
  Drop(std::move(released));
}

}  // namespace epd
