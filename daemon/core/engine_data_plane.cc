// Engine::Impl: the frontend-launched data path (data_plane.h). Attaching describes what a
// frontend maps; a launching frontend's end resets its group's device sync state. Device
// calls (exports, resets) happen with no engine lock held.
#include <unistd.h>

#include <random>

#include "daemon/core/engine_impl.h"
#include "daemon/core/log.h"

namespace epd {
namespace {

StatusOr<std::shared_ptr<Handle>> FindHandleLocked(const Session& session, ObjectId handle_id) {
  auto it = session.handles.find(handle_id);
  if (it == session.handles.end()) {
    return NotFoundError("handle_id = {} is not a handle of this session", handle_id);
  }
  return it->second;
}

StatusOr<std::shared_ptr<Handle>> FindOpenHandle(const std::shared_ptr<Session>& session,
                                                 ObjectId handle_id) {
  std::lock_guard lock(session->mutex);
  if (session->closed) return NotFoundError("session_id = {} is not an open session", session->id);
  return FindHandleLocked(*session, handle_id);
}

}  // namespace

StatusOr<DataPlaneInfo> Engine::Impl::AttachDataPlane(SessionId id, ObjectId handle_id,
                                                      uint64_t reset_epoch) {
  if (reset_epoch != 0) EPD_RETURN_IF_ERROR(RestartEpoch(id, handle_id, reset_epoch));
  return AttachDataPlaneOnce(id, handle_id);
}

// A frontend's collective of `reset_epoch` failed (a peer timed out): the ranks' op counts may
// differ now, so all restart numbering together in a new epoch. Once per epoch: the other
// ranks asking for the same epoch find it already left.
Status Engine::Impl::RestartEpoch(SessionId id, ObjectId handle_id, uint64_t reset_epoch) {
  EPD_ASSIGN_OR_RETURN(std::shared_ptr<Session> session, sessions_.Find(id));
  EPD_ASSIGN_OR_RETURN(std::shared_ptr<Handle> handle, FindOpenHandle(session, handle_id));
  Group& group = *handle->group;
  {
    std::lock_guard lock(group.data_plane_mutex);
    if (group.data_plane == nullptr) {
      return FailedPreconditionError("reset_epoch = {}: group '{}' has no data plane yet",
                                     reset_epoch, group.config.name);
    }
    const uint64_t current = group.data_plane->epoch();
    if (reset_epoch > current) {
      return InvalidArgumentError("reset_epoch = {} is newer than group '{}''s epoch {}",
                                  reset_epoch, group.config.name, current);
    }
    if (reset_epoch < current) return OkStatus();
  }
  EPD_ASSIGN_OR_RETURN(uint64_t base,
                       backend_->ResetDataPlane(*group.backend, /*dead_group_rank=*/-1));
  std::lock_guard lock(group.data_plane_mutex);
  if (group.data_plane->epoch() == reset_epoch) {
    group.data_plane->BeginEpoch(base);
    EPD_LOG(kCore, warn, "group '{}': epoch {} failed on a frontend; epoch {} starts at op {}",
            group.config.name, reset_epoch, group.data_plane->epoch(), base + 1);
  }
  return OkStatus();
}

StatusOr<DataPlaneInfo> Engine::Impl::AttachDataPlaneOnce(SessionId id, ObjectId handle_id) {
  EPD_ASSIGN_OR_RETURN(std::shared_ptr<Session> session, sessions_.Find(id));
  EPD_ASSIGN_OR_RETURN(std::shared_ptr<Handle> me, FindOpenHandle(session, handle_id));
  Group& group = *me->group;
  if (group.config.fp8_dispatch()) {
    // The frontend-launched kernels move the token dtype only; FP8 groups use the daemon's ops.
    return FailedPreconditionError(
        "group '{}' dispatches FP8: the frontend-launched data path moves the token dtype only; "
        "use the daemon's streams for this group",
        group.config.name);
  }
  EPD_ASSIGN_OR_RETURN(std::vector<std::shared_ptr<Handle>> members, GroupMembers(group));
  bool first = false;
  {
    std::lock_guard lock(group.data_plane_mutex);
    first = group.data_plane == nullptr;
  }
  DataPlaneInfo info;
  info.handle_id = handle_id;
  info.group_rank = me->group_rank;
  info.config = group.config;
  info.layout = me->backend->layout();
  info.timeout_ns = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(backend_->op_timeout()).count());
  for (const auto& member : members) {
    EPD_ASSIGN_OR_RETURN(DataPlaneExport exported,
                         backend_->ExportDataPlane(*group.backend, *member->backend));
    info.peers.push_back(DataPlanePeer{member->group_rank, member->node_rank,
                                       member->backend->exported().Describe(),
                                       exported.sync_area, exported.handle_slot});
    if (member == me) {
      info.private_region = exported.private_region;
      info.private_offsets = exported.private_offsets;
      info.sync_area_bytes = exported.sync_area_bytes;
      info.max_blocks = exported.max_blocks;
    }
  }
  uint64_t base = 0;
  if (first) {
    EPD_ASSIGN_OR_RETURN(base, backend_->ResetDataPlane(*group.backend, /*dead_group_rank=*/-1));
  }
  std::lock_guard session_lock(session->mutex);
  if (session->closed || session->handles.count(handle_id) == 0) {
    return NotFoundError("handle_id = {} was destroyed while attaching", handle_id);
  }
  std::lock_guard lock(group.data_plane_mutex);
  if (group.data_plane == nullptr) {
    // Attachments run one at a time on the control worker: the first one creates the page.
    const std::string page_name =
        fmt::format("/epd-{}-{:08x}-group-{}", getpid(), std::random_device{}(), ++state_pages_);
    EPD_ASSIGN_OR_RETURN(group.data_plane, GroupDataPlane::Create(page_name, base));
  }
  EPD_RETURN_IF_ERROR(group.data_plane->Attach(me->group_rank, id));
  info.state_page = group.data_plane->state_page();
  info.epoch = group.data_plane->epoch();
  info.sequence_base = group.data_plane->sequence_base();
  EPD_LOG(kCore, info, "group '{}' rank {}: frontend-launched by session {} (epoch {})",
          group.config.name, me->group_rank, id, info.epoch);
  return info;
}

StatusOr<std::vector<std::shared_ptr<Handle>>> Engine::Impl::GroupMembers(
    const Group& group) const {
  std::vector<std::shared_ptr<Handle>> members(group.config.world_size());
  auto consider = [&](const std::shared_ptr<Handle>& handle) {
    if (handle->group.get() == &group) members[handle->group_rank] = handle;
  };
  for (const auto& handle : persistent_.All()) consider(handle);
  for (const auto& session : sessions_.All()) {
    std::lock_guard lock(session->mutex);
    for (const auto& [hid, handle] : session->handles) consider(handle);
  }
  for (int r = 0; r < group.config.world_size(); ++r) {
    if (members[r] == nullptr) {
      return FailedPreconditionError(
          "group '{}': group rank {} (node rank {}) has no handle yet; a frontend-launched "
          "rank maps every peer's buffers, so attach once every rank created its handle",
          group.config.name, r, group.config.ranks[r]);
    }
  }
  return members;
}

void Engine::Impl::ReleaseLaunchesLocked(SessionId id, const std::shared_ptr<Group>& group,
                                         std::vector<LaunchRelease>& out) {
  std::lock_guard lock(group->data_plane_mutex);
  if (group->data_plane == nullptr) return;
  for (int rank : group->data_plane->Release(id)) out.push_back(LaunchRelease{group, rank});
}

// A frontend-launched rank's frontend ended, maybe mid-op: its ops are marked abandoned (the
// survivors' pending op fails at once naming the rank), its sync state cleared, and a new
// epoch starts so the survivors' next op meets a fresh frontend of the rank.
void Engine::Impl::ResetLaunchedGroups(const std::vector<LaunchRelease>& launches,
                                       std::string_view reason) {
  for (const LaunchRelease& launch : launches) {
    const std::string& name = launch.group->config.name;
    StatusOr<uint64_t> base = backend_->ResetDataPlane(*launch.group->backend, launch.group_rank);
    if (!base.ok()) {
      EPD_LOG(kCore, error, "group '{}': resetting after rank {}'s frontend ended failed: {}",
              name, launch.group_rank, base.status().ToString());
      continue;
    }
    std::lock_guard lock(launch.group->data_plane_mutex);
    launch.group->data_plane->BeginEpoch(*base);
    EPD_LOG(kCore, warn,
            "group '{}': rank {}'s frontend ended ({}); device sync state reset, epoch {} "
            "starts at op {}",
            name, launch.group_rank, reason, launch.group->data_plane->epoch(), *base + 1);
  }
}

}  // namespace epd
