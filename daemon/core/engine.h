// Engine: the daemon's core. Sessions, session-scoped ids, the buffer registry, groups,
// handles, fences and per-rank ordered op queues. A rank's collective op goes to the backend as
// soon as that rank's worker reaches it; ranks meet on the backend's streams, never in the
// engine. It knows nothing of gRPC: the service layer translates requests into these calls.
//
// Thread safety: every public method may be called from any thread. Op submission never
// blocks the caller on device work; `done` callbacks run on worker or completion threads.
//
// Control calls that may block (building groups and handles, opening frontend memory, and
// every release of device memory or IPC mappings) run on the engine's control worker. Each
// has an asynchronous form whose `done` runs there (or on the caller for a request refused at
// once), for RPC threads; the synchronous form waits for it and is for startup code and tests
// (on the control worker itself, e.g. from a backend call, it runs inline).
//
// The implementation is split by concern: session_table (sessions, ids, idle expiry),
// group_registry (groups and handle membership), handle_state (op outcome state machine),
// persistent_handles, op_validation (request checks), op_pipeline (running ops),
// control_worker.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/session_secret.h"
#include "common/status.h"
#include "daemon/core/backend.h"
#include "daemon/core/data_plane.h"
#include "daemon/core/group_config.h"
#include "daemon/core/session_limits.h"

namespace epd {

using SessionId = uint64_t;
using ObjectId = uint64_t;

struct SessionPeer {  // the connecting process, from the unix socket's credentials
  int64_t pid = -1;   // -1: unknown (TCP, tests)
  int64_t uid = -1;
  int64_t gid = -1;
  bool operator==(const SessionPeer&) const = default;
};

struct SessionSummary {
  SessionId id = 0;
  int rank = 0;
  std::string client_name;
  bool unary = false;
  SessionPeer peer;
  Clock::time_point opened;
  uint64_t ops_completed = 0;
  uint64_t ops_failed = 0;
  uint64_t ops_in_flight = 0;  // accepted, not yet answered
  uint64_t ops_running = 0;    // on the backend's lane, not yet passed (e.g. at a fence wait)
};

struct OpRecord {  // one finished op, for metrics and logs
  std::string_view kind;   // "update", "dispatch", "combine"
  std::string_view group;  // valid during the callback only
  int rank = 0;            // node rank
  StatusCode code = StatusCode::kOk;
  std::chrono::microseconds host_time{0};  // submit -> done
  uint64_t payload_bytes = 0;  // token bytes moved by a dispatch/combine (n * hidden * dtype)
};

struct EngineOptions {
  std::chrono::milliseconds unary_session_idle_timeout{60'000};
  std::chrono::milliseconds drain_timeout{5'000};
  // May be empty; called once per op on a worker/completion thread; must not block.
  std::function<void(const OpRecord&)> on_op_finished;
  SessionLimits limits;
  // Multi-node deployments: fills the span of groups created with spans_nodes and the cluster
  // view of DescribeNode. Null on a daemon that runs alone.
  std::shared_ptr<ClusterStore> cluster;
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
  SessionSecret secret = 0;  // for the opener only: Touch(session, caller, secret) checks it
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
  uint64_t held_bytes = 0;  // BackendHandle::held_bytes
};

struct GroupSummary {
  GroupConfig config;
  bool persistent = false;
  int handles = 0;
  std::vector<RankTransportState> transport;  // BackendGroup::transport()
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
  uint64_t registered_buffers = 0;  // in open sessions (fence pages and handles included)
  uint64_t registered_bytes = 0;
  // Bytes of the handles (receive regions) that live on each node rank, by rank.
  std::vector<uint64_t> handle_bytes_per_rank;
};

struct UpdateRequest {
  ObjectId handle_id = 0;
  TensorRef topk_idx;
  std::optional<TensorRef> topk_weights;
  int rank = -1;  // optional: must match the session's rank when set
};

struct DispatchRequest {
  ObjectId handle_id = 0;
  TensorRef x;                        // token dtype; fp8 dispatch also takes e4m3 x with x_scales
  std::optional<TensorRef> x_scales;  // [n, H / 128], pre-quantized fp8 x only
  int rank = -1;
};

struct CombineRequest {
  ObjectId handle_id = 0;
  std::optional<TensorRef> expert_out;  // default: the handle's recv_x (required with fp8)
  TensorRef out;
  int rank = -1;
};

using OpDone = std::function<void(Status)>;
using StatusCallback = std::function<void(Status)>;
template <typename T>
using ResultCallback = std::function<void(StatusOr<T>)>;

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
  // `peer` is recorded for ListSessions (and policy checks); unknown by default.
  StatusOr<SessionInfo> OpenSession(int rank, std::string client_name, bool unary,
                                    SessionPeer peer = {});
  // The session and its ids are gone when this returns; its memory is released on the
  // control worker, before `done` runs.
  void CloseSession(SessionId session, std::string_view reason, StatusCallback done);
  Status CloseSession(SessionId session, std::string_view reason);
  Status Touch(SessionId session);  // NOT_FOUND when closed or unknown
  std::vector<SessionSummary> ListSessions() const;
  // Touch on behalf of a caller presenting `secret`: NOT_FOUND when the session is not open;
  // PERMISSION_DENIED when the caller does not hold the session's credential (another peer:
  // pid or uid differ; or another secret), with one message naming header
  // kSessionSecretHeader whichever part failed. So a session is usable only by the process
  // that opened it and learned its secret.
  Status Touch(SessionId session, const SessionPeer& caller, SessionSecret secret);

  void RegisterBuffer(SessionId session, const MemorySource& source,
                      ResultCallback<BufferInfo> done);
  StatusOr<BufferInfo> RegisterBuffer(SessionId session, const MemorySource& source);
  void ReleaseBuffer(SessionId session, ObjectId buffer, StatusCallback done);
  Status ReleaseBuffer(SessionId session, ObjectId buffer);

  void CreateFence(SessionId session, ResultCallback<FenceInfo> done);
  StatusOr<FenceInfo> CreateFence(SessionId session);
  void DestroyFence(SessionId session, ObjectId fence, StatusCallback done);
  Status DestroyFence(SessionId session, ObjectId fence);

  // Groups are node-wide, named; session-owned unless persistent. CreateGroup of an
  // existing name with the same shape is idempotent and answers with the existing group's
  // configuration; concurrent creates of one name build it once.
  void CreateGroup(std::optional<SessionId> session, const GroupConfig& config, bool persistent,
                   ResultCallback<GroupConfig> done);
  Status CreateGroup(std::optional<SessionId> session, const GroupConfig& config, bool persistent);
  std::vector<GroupSummary> ListGroups() const;
  void DestroyGroup(SessionId session, std::string_view name, StatusCallback done);
  Status DestroyGroup(SessionId session, std::string_view name);

  // Handles belong to the session's rank. `name` + persistent: outlives the session.
  void CreateHandle(SessionId session, std::string_view group, int rank, std::string_view name,
                    bool persistent, ResultCallback<HandleInfo> done);
  StatusOr<HandleInfo> CreateHandle(SessionId session, std::string_view group, int rank,
                                    std::string_view name, bool persistent);
  // Creates a persistent handle at startup (config file), owned by the engine.
  Status CreatePersistentHandle(std::string_view group, int node_rank, std::string_view name);
  StatusOr<HandleInfo> AttachHandle(SessionId session, std::string_view name);
  void DestroyHandle(SessionId session, ObjectId handle, StatusCallback done);
  Status DestroyHandle(SessionId session, ObjectId handle);
  // The frontend-launched data path (data_plane.h): from now on the session's frontend
  // launches this handle's ops itself; the answer says what to map. Needs every group rank's
  // handle to exist. While any rank of a group is frontend-launched the daemon refuses the
  // group's update/dispatch/combine; when the launching session ends (or destroys the
  // handle) the group's device sync state is reset and a new epoch begins. `reset_epoch`
  // (non-zero): the caller's collective of that epoch failed on the device, so the ranks' op
  // counts may differ; the group starts a new epoch unless it already left that one.
  // Runs on the control worker (device calls); the synchronous form waits for it.
  void AttachDataPlane(SessionId session, ObjectId handle, uint64_t reset_epoch,
                       ResultCallback<DataPlaneInfo> done);
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

  // Liveness: an error naming the rank worker or backend thread that has been busy with one
  // task for longer than `limit` (a hang); OK when every such thread is idle or progressing.
  Status CheckLiveness(std::chrono::milliseconds limit) const;

  // Stops accepting new sessions and ops (UNAVAILABLE), waits up to drain_timeout for
  // in-flight ops, then closes every session.
  void Shutdown();

 private:
  class Impl;
  explicit Engine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace epd
