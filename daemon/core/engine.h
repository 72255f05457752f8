// Engine: the daemon's core. Sessions, session-scoped ids, the buffer registry, groups,
// handles, fences, per-rank ordered op queues and the matching of collective ops across
// ranks. It knows nothing of gRPC: the service layer translates requests into these calls.
//
// Thread safety: every public method may be called from any thread. Op submission never
// blocks the caller on device work; `done` callbacks run on worker or completion threads.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "daemon/core/backend.h"
#include "daemon/core/data_plane.h"
#include "daemon/core/group_config.h"
#include "common/status.h"

namespace epd {

using SessionId = uint64_t;
using ObjectId = uint64_t;

struct EngineOptions {
  std::chrono::milliseconds unary_session_idle_timeout{60'000};
  std::chrono::milliseconds drain_timeout{5'000};
};

// A frontend's reference to part of a registered (or exported) buffer.
struct TensorRef {
  ObjectId buffer_id = 0;
  uint64_t offset_bytes = 0;
  DType dtype = DType::kFp32;
  std::vector<int64_t> shape;
};

struct FenceOp {
  ObjectId fence_id = 0;
  uint64_t value = 0;
};

struct OpOptions {
  std::optional<FenceOp> wait;    // the daemon waits for counter >= value before reading inputs
  std::optional<FenceOp> signal;  // the daemon writes value after the outputs are complete
  bool blocking = false;          // done() only after device completion
};

struct SessionInfo {
  SessionId id = 0;
  int rank = 0;
  std::string client_name;
};

struct BufferInfo {
  ObjectId id = 0;
  uint64_t size = 0;
  int device = -1;
};

struct FenceInfo {
  ObjectId id = 0;
  ObjectId buffer_id = 0;  // the fence page, registered in the session like any buffer
  MemorySource source;     // what the client opens
  uint64_t counter_offset = 0;
};

// Where each exported tensor of a handle lives: offsets into its exported buffer.
struct HandleInfo {
  ObjectId id = 0;
  std::string name;  // empty unless persistent
  std::string group;
  int group_rank = 0;
  bool persistent = false;
  ObjectId buffer_id = 0;  // the exported receive region, registered in the session
  MemorySource source;
  HandleLayout layout;
  GroupConfig config;
};

struct GroupSummary {
  GroupConfig config;
  bool persistent = false;
  int handles = 0;
};

struct OpCounters {
  uint64_t completed = 0;
  uint64_t failed = 0;
  uint64_t total_us = 0;
};

struct EngineStats {
  uint64_t sessions_open = 0;
  uint64_t sessions_total = 0;
  uint64_t allocations = 0;
  uint64_t frees = 0;
  int64_t live_bytes = 0;
  OpCounters update, dispatch, combine;
};

struct UpdateRequest {
  ObjectId handle_id = 0;
  TensorRef topk_idx;
  std::optional<TensorRef> topk_weights;
  int rank = -1;  // optional: must match the session's rank when set
};

struct DispatchRequest {
  ObjectId handle_id = 0;
  TensorRef x;
  int rank = -1;
};

struct CombineRequest {
  ObjectId handle_id = 0;
  std::optional<TensorRef> expert_out;  // default: the handle's recv_x
  TensorRef out;
  int rank = -1;
};

using OpDone = std::function<void(Status)>;

class Engine {
 public:
  static StatusOr<std::unique_ptr<Engine>> Create(std::unique_ptr<Backend> backend,
                                                  EngineOptions options);
  ~Engine();

  NodeDescription DescribeNode() const;
  int num_ranks() const;
  EngineStats Stats() const;
  AllocationCounter& allocations();

  // Sessions. A streaming session lives until CloseSession (the stream ended); a unary one
  // also ends after `unary_session_idle_timeout` without calls.
  StatusOr<SessionInfo> OpenSession(int rank, std::string client_name, bool unary);
  Status CloseSession(SessionId session, std::string_view reason);
  Status Touch(SessionId session);  // NOT_FOUND when closed or unknown

  StatusOr<BufferInfo> RegisterBuffer(SessionId session, const MemorySource& source);
  Status ReleaseBuffer(SessionId session, ObjectId buffer);

  StatusOr<FenceInfo> CreateFence(SessionId session);
  Status DestroyFence(SessionId session, ObjectId fence);

  // Groups are node-wide, named; session-owned unless persistent. CreateGroup of an
  // existing name with the same shape is idempotent (returns the existing group).
  Status CreateGroup(std::optional<SessionId> session, const GroupConfig& config, bool persistent);
  std::vector<GroupSummary> ListGroups() const;
  Status DestroyGroup(SessionId session, std::string_view name);

  // Handles belong to the session's rank. `name` + persistent: outlives the session.
  StatusOr<HandleInfo> CreateHandle(SessionId session, std::string_view group, int rank,
                                    std::string_view name, bool persistent);
  // Creates a persistent handle at startup (config file), owned by the engine.
  Status CreatePersistentHandle(std::string_view group, int node_rank, std::string_view name);
  StatusOr<HandleInfo> AttachHandle(SessionId session, std::string_view name);
  Status DestroyHandle(SessionId session, ObjectId handle);
  // The frontend-launched data path (data_plane.h): from now on the session's frontend
  // launches this handle's ops itself; the answer says what to map. Needs every group rank's
  // handle to exist. While any rank of a group is frontend-launched the daemon refuses the
  // group's update/dispatch/combine; when the launching session ends (or destroys the
  // handle) the group's device sync state is reset and a new epoch begins. `reset_epoch`
  // (non-zero): the caller's collective of that epoch failed on the device, so the ranks' op
  // counts may differ; the group starts a new epoch unless it already left that one.
  StatusOr<DataPlaneInfo> AttachDataPlane(SessionId session, ObjectId handle,
                                          uint64_t reset_epoch = 0);

  // Ops: validated synchronously (the returned Status); then run in order on the rank's
  // worker, and `done` is called once (after device completion when blocking, else once
  // enqueued). When the returned Status is not OK, `done` is never called.
  Status SubmitUpdate(SessionId session, const UpdateRequest& request, const OpOptions& options,
                      OpDone done);
  Status SubmitDispatch(SessionId session, const DispatchRequest& request, const OpOptions& options,
                        OpDone done);
  Status SubmitCombine(SessionId session, const CombineRequest& request, const OpOptions& options,
                       OpDone done);

  // Stops accepting new sessions and ops (UNAVAILABLE), waits up to drain_timeout for
  // in-flight ops, then closes every session.
  void Shutdown();

 private:
  class Impl;
  explicit Engine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace epd
