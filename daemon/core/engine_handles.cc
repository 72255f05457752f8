// Engine::Impl: groups and handles. Creations run on the control worker; destroys update
// the tables at once and leave the freeing to the control worker.
#include <fmt/ranges.h>

#include "daemon/core/engine_impl.h"
#include "daemon/core/log.h"
#include "daemon/core/name_rules.h"
#include "daemon/core/op_validation.h"

namespace epd {
namespace {

std::shared_ptr<Memory> MemoryOfHandle(const std::shared_ptr<Handle>& handle) {
  return std::shared_ptr<Memory>(handle, &handle->backend->exported());
}

}  // namespace

StatusOr<GroupConfig> Engine::Impl::CreateGroup(std::optional<SessionId> owner,
                                                const GroupConfig& requested, bool persistent) {
  GroupConfig config = requested;
  // A spanning group's place in the cluster is this daemon's, whatever the client sent.
  config.span = GroupConfig::Span{};
  if (config.spans_nodes && options_.cluster != nullptr) config.span = options_.cluster->Span();
  std::optional<int64_t> creator_uid;
  if (owner.has_value()) {
    EPD_ASSIGN_OR_RETURN(std::shared_ptr<Session> session, sessions_.Find(*owner));
    creator_uid = session->peer.uid;
  }
  EPD_RETURN_IF_ERROR(config.Validate(backend_->num_ranks()));
  // Creations run one at a time on the control worker: a concurrent create of the same name
  // finds the group built by the first and shares it.
  EPD_ASSIGN_OR_RETURN(std::shared_ptr<Group> existing, groups_->FindSameShape(config));
  if (existing != nullptr) {
    // NOTE: answering OK would promise what cannot hold: the group still ends with its owner.
    if (persistent && !existing->persistent) {
      return FailedPreconditionError(
          "persistent = true, but group '{}' exists owned by a session (not persistent) and ends "
          "with it; create the persistent group before any session creates it, or under another "
          "name",
          config.name);
    }
    return existing->config;
  }
  const GroupRegistry::Counts held = groups_->CountFor(owner);
  if (persistent) {
    EPD_RETURN_IF_ERROR(CheckLimit(held.persistent, 1, options_.limits.persistent_groups,
                                   "persistent groups", "limits.persistent_groups"));
  } else {
    EPD_RETURN_IF_ERROR(CheckLimit(held.owned, 1, options_.limits.groups, "groups",
                                   "limits.groups_per_session"));
  }
  auto group = std::make_shared<Group>();
  group->config = config;
  group->persistent = persistent;
  group->owner = persistent || !owner.has_value() ? 0 : *owner;
  if (persistent) group->creator_uid = creator_uid;
  EPD_ASSIGN_OR_RETURN(group->backend, backend_->CreateGroup(config));
  EPD_RETURN_IF_ERROR(groups_->Add(group));
  // The owner may have closed while the group was built: its close then missed the group.
  if (group->owner != 0 && !sessions_.Find(group->owner).ok()) {
    groups_->ReleaseOwnedBy(group->owner);
  }
  EPD_LOG(kCore, info, "created {}{}", config.ToString(), persistent ? " (persistent)" : "");
  return config;
}

Status Engine::Impl::DestroyGroup(SessionId id, std::string_view name) {
  EPD_ASSIGN_OR_RETURN(std::shared_ptr<Session> session, sessions_.Find(id));
  return groups_->Destroy(name, id, session->peer.uid);
}

// A group rank's collectives belong to the one frontend holding its handle: a second
// session of the same node rank must not join the group beside it and take its tokens.
Status Engine::Impl::CheckRankFree(const Group& group, int node_rank, SessionId id) const {
  for (const auto& other : sessions_.All()) {
    if (other->id == id || other->rank != node_rank) continue;
    std::lock_guard lock(other->mutex);
    for (const auto& [handle_id, handle] : other->handles) {
      if (handle->group.get() == &group) {
        return PermissionDeniedError(
            "rank {} of group '{}' is held by another session of this rank; one session per "
            "rank joins a group",
            node_rank, group.config.name);
      }
    }
  }
  for (const auto& handle : persistent_.All()) {
    if (handle->group.get() == &group && handle->node_rank == node_rank &&
        handle->attached_to != id) {
      return PermissionDeniedError(
          "rank {} of group '{}' has the persistent handle '{}': attach it (AttachHandle) "
          "instead of creating another",
          node_rank, group.config.name, handle->name);
    }
  }
  return OkStatus();
}

StatusOr<std::shared_ptr<Handle>> Engine::Impl::NewHandle(const std::shared_ptr<Group>& group,
                                                          int node_rank, std::string_view name,
                                                          bool persistent) {
  const int group_rank = group->config.GroupRankOf(node_rank);
  if (group_rank < 0) {
    return InvalidArgumentError("rank {} is not a member of group '{}' (ranks {})", node_rank,
                                group->config.name, fmt::join(group->config.ranks, ", "));
  }
  auto handle = std::make_shared<Handle>();
  handle->name = std::string(name);
  handle->persistent = persistent;
  handle->group = group;
  handle->node_rank = node_rank;
  handle->group_rank = group_rank;
  // Counted from here: every return below drops the handle, and with it the count.
  EPD_ASSIGN_OR_RETURN(handle->membership, groups_->Join(group));
  EPD_ASSIGN_OR_RETURN(handle->backend, backend_->CreateHandle(*group->backend, group_rank));
  EPD_LOG(kCore, info, "group '{}' rank {}: handle '{}' created ({} bytes){}", group->config.name,
          node_rank, name, handle->backend->layout().total_bytes(),
          persistent ? " (persistent)" : "");
  return handle;
}

StatusOr<HandleInfo> Engine::Impl::CreateHandle(SessionId id, std::string_view group_name,
                                                int rank, std::string_view name,
                                                bool persistent) {
  EPD_RETURN_IF_ERROR(ValidateHandleRequest(group_name, name, persistent));
  EPD_RETURN_IF_ERROR(ValidatePrintableName(name, "name", kMaxHandleNameBytes));
  EPD_ASSIGN_OR_RETURN(std::shared_ptr<Session> session, sessions_.Find(id));
  const int node_rank = session->rank;
  EPD_RETURN_IF_ERROR(CheckRequestRank(rank, node_rank));
  EPD_ASSIGN_OR_RETURN(std::shared_ptr<Group> group, groups_->Find(group_name));
  if (!name.empty() && persistent_.Contains(name, node_rank)) {
    return AlreadyExistsError("handle '{}' of rank {} already exists: use AttachHandle", name,
                              node_rank);
  }
  auto handle_limit = [&] {
    std::lock_guard lock(session->mutex);
    return CheckLimit(session->handles.size(), 1, options_.limits.handles, "handles",
                      "limits.handles_per_session");
  };
  EPD_RETURN_IF_ERROR(CheckRankFree(*group, node_rank, id));
  EPD_RETURN_IF_ERROR(handle_limit());
  EPD_ASSIGN_OR_RETURN(std::shared_ptr<Handle> handle,
                       NewHandle(group, node_rank, name, persistent));
  // Creations run one at a time on the control worker; attachments do not: check again.
  EPD_RETURN_IF_ERROR(CheckRankFree(*group, node_rank, id));
  EPD_RETURN_IF_ERROR(handle_limit());
  std::lock_guard lock(session->mutex);
  if (session->closed) return NotFoundError("session_id = {} is not an open session", id);
  if (persistent) EPD_RETURN_IF_ERROR(persistent_.Add(handle));
  return AttachLocked(*session, handle);
}

Status Engine::Impl::CreatePersistentHandle(std::string_view group_name, int node_rank,
                                            std::string_view name) {
  EPD_RETURN_IF_ERROR(ValidateHandleRequest(group_name, name, /*persistent=*/true));
  EPD_ASSIGN_OR_RETURN(std::shared_ptr<Group> group, groups_->Find(group_name));
  if (persistent_.Contains(name, node_rank)) {
    return AlreadyExistsError("handle '{}' of rank {} already exists", name, node_rank);
  }
  EPD_ASSIGN_OR_RETURN(std::shared_ptr<Handle> handle,
                       NewHandle(group, node_rank, name, /*persistent=*/true));
  return persistent_.Add(handle);
}

StatusOr<HandleInfo> Engine::Impl::AttachHandle(SessionId id, std::string_view name) {
  EPD_RETURN_IF_ERROR(ValidateAttachName(name));
  EPD_ASSIGN_OR_RETURN(std::shared_ptr<Session> session, sessions_.Find(id));
  std::lock_guard lock(session->mutex);
  if (session->closed) return NotFoundError("session_id = {} is not an open session", id);
  std::shared_ptr<Handle> handle = persistent_.Find(name, session->rank);
  if (handle == nullptr) {
    return NotFoundError("no persistent handle '{}' for rank {}", name, session->rank);
  }
  for (const auto& [handle_id, attached] : session->handles) {
    if (attached == handle) return DescribeHandle(handle_id, *session, *handle);
  }
  SessionId expected = 0;
  if (!handle->attached_to.compare_exchange_strong(expected, id)) {
    return FailedPreconditionError("handle '{}' of rank {} is attached to session {}", name,
                                   session->rank, expected);
  }
  return AttachLocked(*session, handle);
}

Status Engine::Impl::DestroyHandle(SessionId id, ObjectId handle_id, Released& released) {
  EPD_ASSIGN_OR_RETURN(std::shared_ptr<Session> session, sessions_.Find(id));
  std::vector<LaunchRelease> launches;
  {
    std::lock_guard lock(session->mutex);
    auto it = session->handles.find(handle_id);
    if (it == session->handles.end()) {
      return NotFoundError("handle_id = {} is not a handle of this session", handle_id);
    }
    ReleaseLaunchesLocked(id, it->second->group, launches);
    DestroyHandleLocked(*session, it, released);
  }
  ResetLaunchedGroups(launches, "its handle was destroyed");
  return OkStatus();
}

void Engine::Impl::DestroyHandleLocked(Session& session,
                                       std::map<ObjectId, std::shared_ptr<Handle>>::iterator it,
                                       Released& released) {
  const ObjectId handle_id = it->first;
  std::shared_ptr<Handle> handle = it->second;
  DetachLocked(*handle);
  if (handle->persistent) {
    persistent_.Remove(*handle);
    handle->membership.Leave();
  }
  if (auto region = session.buffers.Take(session.handle_buffers[handle_id]); region.ok()) {
    released.push_back(std::move(region).value());
  }
  session.handle_buffers.erase(handle_id);
  session.handles.erase(it);
  released.push_back(std::move(handle));
}

HandleInfo Engine::Impl::AttachLocked(Session& session, const std::shared_ptr<Handle>& handle) {
  const ObjectId handle_id = session.next_id++;
  const ObjectId buffer_id = session.next_id++;
  session.handles[handle_id] = handle;
  session.handle_buffers[handle_id] = buffer_id;
  session.buffers.Add(buffer_id, MemoryOfHandle(handle));
  handle->attached_to = session.id;
  return DescribeHandle(handle_id, session, *handle);
}

// A handle leaves its session: persistent ones stay, the others leave their group now (an
// op in flight may still hold the handle itself).
void Engine::Impl::DetachLocked(Handle& handle) {
  handle.attached_to = 0;
  if (!handle.persistent) handle.membership.Leave();
}

HandleInfo Engine::Impl::DescribeHandle(ObjectId handle_id, const Session& session,
                                        Handle& handle) const {
  HandleInfo info;
  info.id = handle_id;
  info.name = handle.name;
  info.group = handle.group->config.name;
  info.group_rank = handle.group_rank;
  info.persistent = handle.persistent;
  info.buffer_id = session.handle_buffers.at(handle_id);
  info.source = handle.backend->exported().Describe();
  info.layout = handle.backend->layout();
  info.config = handle.group->config;
  info.held_bytes = handle.backend->held_bytes();
  return info;
}

}  // namespace epd
