// Engine::Impl: the engine's parts and the calls that tie them together. Private to the
// engine's .cc files (engine.cc: sessions, buffers, fences, lifecycle; engine_handles.cc:
// groups and handles; engine_ops.cc: op submission).
//
// Locks, always taken in this order and never across a backend call: a Session's mutex,
// then the GroupRegistry's or PersistentHandles' mutex. The SessionTable's mutex and the
// pipeline's are never held while taking another.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>

#include "daemon/core/control_worker.h"
#include "daemon/core/engine.h"
#include "daemon/core/group_registry.h"
#include "daemon/core/handle_state.h"
#include "daemon/core/op_pipeline.h"
#include "daemon/core/persistent_handles.h"
#include "daemon/core/session_table.h"

namespace epd {

class Engine::Impl {
 public:
  Impl(std::unique_ptr<Backend> backend, EngineOptions options);
  ~Impl();

  Backend& backend() { return *backend_; }
  ClusterStore* cluster() const { return options_.cluster.get(); }
  ControlWorker& control() { return *control_; }

  // --- sessions, buffers, fences (engine.cc) ---
  StatusOr<SessionInfo> OpenSession(int rank, std::string client_name, bool unary,
                                    SessionPeer peer);
  // Removes the session and everything it holds now; what must be freed goes to `released`.
  Status CloseSession(SessionId id, std::string_view reason, Released& released);
  Status Touch(SessionId id);
  Status Touch(SessionId id, const SessionPeer& caller, SessionSecret secret);
  std::vector<SessionSummary> ListSessions() const { return sessions_.List(); }
  StatusOr<BufferInfo> RegisterBuffer(SessionId id, const MemorySource& source);
  Status ReleaseBuffer(SessionId id, ObjectId buffer, Released& released);
  StatusOr<FenceInfo> CreateFence(SessionId id);
  Status DestroyFence(SessionId id, ObjectId fence, Released& released);
  EngineStats Stats() const;
  Status CheckLiveness(std::chrono::milliseconds limit) const;
  void Shutdown();

  // --- groups and handles (engine_handles.cc); the creations run on the control worker ---
  StatusOr<GroupConfig> CreateGroup(std::optional<SessionId> owner, const GroupConfig& config,
                                    bool persistent);
  std::vector<GroupSummary> ListGroups() const { return groups_->List(); }
  Status DestroyGroup(SessionId id, std::string_view name);
  StatusOr<HandleInfo> CreateHandle(SessionId id, std::string_view group_name, int rank,
                                    std::string_view name, bool persistent);
  Status CreatePersistentHandle(std::string_view group_name, int node_rank,
                                std::string_view name);
  StatusOr<HandleInfo> AttachHandle(SessionId id, std::string_view name);
  Status DestroyHandle(SessionId id, ObjectId handle_id, Released& released);

  // --- the frontend-launched data path (engine_data_plane.cc) ---
  StatusOr<DataPlaneInfo> AttachDataPlane(SessionId id, ObjectId handle_id,
                                          uint64_t reset_epoch);

  // --- ops (engine_ops.cc) ---
  Status SubmitUpdate(SessionId id, const UpdateRequest& request, const OpOptions& options,
                      OpDone done);
  Status SubmitDispatch(SessionId id, const DispatchRequest& request, const OpOptions& options,
                        OpDone done);
  Status SubmitCombine(SessionId id, const CombineRequest& request, const OpOptions& options,
                       OpDone done);

 private:
  // A frontend-launched rank whose frontend ended (its session closed or it destroyed the
  // handle): its group's device sync state is reset once the locks are dropped.
  struct LaunchRelease {
    std::shared_ptr<Group> group;
    int group_rank = 0;
  };
  // With the session's mutex held: the ranks of `group` that session `id` launched.
  void ReleaseLaunchesLocked(SessionId id, const std::shared_ptr<Group>& group,
                             std::vector<LaunchRelease>& out);
  // With no lock held: resets each released group (ResetDataPlane) and starts a new epoch.
  void ResetLaunchedGroups(const std::vector<LaunchRelease>& launches, std::string_view reason);
  Status RestartEpoch(SessionId id, ObjectId handle_id, uint64_t reset_epoch);
  StatusOr<DataPlaneInfo> AttachDataPlaneOnce(SessionId id, ObjectId handle_id);
  // Every group rank's handle, by group rank; FAILED_PRECONDITION naming the first missing.
  StatusOr<std::vector<std::shared_ptr<Handle>>> GroupMembers(const Group& group) const;

  // A group built and registered; `owner` may have closed meanwhile.
  StatusOr<std::shared_ptr<Handle>> NewHandle(const std::shared_ptr<Group>& group, int node_rank,
                                              std::string_view name, bool persistent);
  // With the session's mutex held.
  HandleInfo AttachLocked(Session& session, const std::shared_ptr<Handle>& handle);
  HandleInfo DescribeHandle(ObjectId handle_id, const Session& session, Handle& handle) const;
  void DetachLocked(Handle& handle);
  // With the session's mutex held: removes the handle `it` names from the session.
  void DestroyHandleLocked(Session& session,
                           std::map<ObjectId, std::shared_ptr<Handle>>::iterator it,
                           Released& released);
  // With the session's mutex held: RESOURCE_EXHAUSTED naming the limit's config key.
  Status CheckBufferLimitsLocked(const Session& session, uint64_t bytes) const;
  // A group rank's collectives belong to the one frontend holding its handle.
  Status CheckRankFree(const Group& group, int node_rank, SessionId id) const;
  // Looks up the session, the handle and the fences of an op; with the session's mutex held.
  StatusOr<OpContext> PrepareOpLocked(const std::shared_ptr<Session>& session,
                                      ObjectId handle_id, int rank, const OpOptions& options);
  // PrepareOpLocked for dispatch and combine: FAILED_PRECONDITION until routing is bound.
  StatusOr<OpContext> PrepareCollectiveLocked(const std::shared_ptr<Session>& session,
                                              ObjectId handle_id, int rank,
                                              const OpOptions& options);
  StatusOr<TensorView> ResolveKeptLocked(OpContext& ctx, const TensorRef& ref,
                                         std::string_view field);
  StatusOr<TensorView> ResolveTokenRowsLocked(OpContext& ctx, const TensorRef& ref,
                                              std::string_view field);
  // Dispatch's x (and, for pre-quantized fp8 x, its x_scales) into `op`.
  Status ResolveDispatchInputLocked(OpContext& ctx, const DispatchRequest& request,
                                    CollectiveOp& op);

  // Declaration order is teardown order reversed: the backend outlives everything that
  // holds its objects; the control worker drains before the registries go.
  std::unique_ptr<Backend> backend_;
  const EngineOptions options_;
  std::unique_ptr<ControlWorker> control_;
  std::shared_ptr<GroupRegistry> groups_;
  PersistentHandles persistent_;
  SessionTable sessions_;
  std::unique_ptr<OpPipeline> pipeline_;
  std::unique_ptr<IdleReaper> reaper_;
  std::mutex shutdown_mutex_;
  bool shut_down_ = false;  // guarded by shutdown_mutex_
  std::atomic<uint64_t> state_pages_{0};  // group state pages made, for their names
};

}  // namespace epd
