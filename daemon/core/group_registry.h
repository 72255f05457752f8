// GroupRegistry: the node's named groups and who uses them.
//
// A handle's membership in its group is a GroupMembership token: the group counts it while
// the token lives, so no error path between creating a handle and attaching it can leave a
// count behind (DestroyGroup would then refuse with handles that do not exist). A group owned
// by a session that ended is "orphaned" and leaves the registry with its last member.
// Whatever the registry drops goes to the releaser (the control worker), never freed under
// its lock.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/core/backend.h"
#include "daemon/core/control_worker.h"
#include "daemon/core/data_plane.h"
#include "daemon/core/engine.h"

namespace epd {

struct Group {
  GroupConfig config;
  bool persistent = false;
  std::unique_ptr<BackendGroup> backend;
  // Persistent and created by a session: that session's user may destroy it. Unset for
  // groups of the config file or created without a session: no session destroys those.
  std::optional<int64_t> creator_uid;

  // Guarded by the registry's mutex.
  SessionId owner = 0;    // 0 when persistent or when the owning session ended
  bool orphaned = false;  // owner ended while members remained
  int members = 0;

  // The frontend-launched data path: set at the first AttachDataPlane. Taken after a
  // Session's mutex, never across a backend call.
  std::mutex data_plane_mutex;
  std::unique_ptr<GroupDataPlane> data_plane;  // guarded by data_plane_mutex
};

class GroupRegistry;

// One handle's membership; movable, not copyable. Leave() (or destruction) uncounts it once.
class GroupMembership {
 public:
  GroupMembership() = default;
  ~GroupMembership() { Leave(); }
  GroupMembership(GroupMembership&& other) noexcept { *this = std::move(other); }
  GroupMembership& operator=(GroupMembership&& other) noexcept;
  GroupMembership(const GroupMembership&) = delete;
  GroupMembership& operator=(const GroupMembership&) = delete;

  void Leave();
  bool active() const { return group_ != nullptr; }

 private:
  friend class GroupRegistry;
  GroupMembership(std::shared_ptr<GroupRegistry> registry, std::shared_ptr<Group> group)
      : registry_(std::move(registry)), group_(std::move(group)) {}
  std::shared_ptr<GroupRegistry> registry_;  // a handle may outlive the engine's own reference
  std::shared_ptr<Group> group_;
};

class GroupRegistry : public std::enable_shared_from_this<GroupRegistry> {
 public:
  // Receives what the registry drops; empty: dropped on the calling thread.
  using Releaser = std::function<void(Released)>;
  static std::shared_ptr<GroupRegistry> Create(Releaser release);
  // The engine stops: from now on dropped groups are freed where they are dropped.
  void DetachReleaser();

  StatusOr<std::shared_ptr<Group>> Find(std::string_view name) const;
  // The registered group of that name with the same shape (idempotent create), or nullptr
  // when there is none; ALREADY_EXISTS when one of another shape exists.
  StatusOr<std::shared_ptr<Group>> FindSameShape(const GroupConfig& config) const;
  // Registers a built group; ALREADY_EXISTS when the name was taken meanwhile.
  Status Add(std::shared_ptr<Group> group);
  // Counts a member of `group`; NOT_FOUND when the group left the registry meanwhile.
  StatusOr<GroupMembership> Join(const std::shared_ptr<Group>& group);
  // Removes a group without members; FAILED_PRECONDITION while it has some.
  // PERMISSION_DENIED unless `caller` may: a session's group by that session, a persistent
  // group by a session of the user who created it, a config group by none.
  Status Destroy(std::string_view name, SessionId caller, int64_t caller_uid);
  // Groups held now: non-persistent ones owned by `owner`, and persistent ones node-wide.
  struct Counts {
    uint64_t owned = 0;
    uint64_t persistent = 0;
  };
  Counts CountFor(std::optional<SessionId> owner) const;
  // `owner` ended: its groups without members go, the others are orphaned.
  void ReleaseOwnedBy(SessionId owner);

  std::vector<GroupSummary> List() const;
  std::vector<std::shared_ptr<Group>> All() const;
  int members(std::string_view name) const;  // -1 when no such group
  void Clear();

 private:
  friend class GroupMembership;
  explicit GroupRegistry(Releaser release) : release_(std::move(release)) {}
  void Leave(const std::shared_ptr<Group>& group);
  void Drop(Released released);

  Releaser release_;  // guarded by mutex_
  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<Group>, std::less<>> groups_;
};

}  // namespace epd
