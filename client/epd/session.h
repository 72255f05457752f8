// Session: one frontend's connection to the daemon, bound to one node rank.
//
// The session lives as long as its bidirectional stream: Close() (or destroying the Session)
// ends it, and the daemon then releases every non-persistent buffer, fence and handle it
// created. Update / Dispatch / Combine travel on the stream (answered in submission order);
// the other calls are unary RPCs carrying the session id, and the session's secret in a
// metadata header: the daemon serves them only to the process that opened the session.
//
// Ops are blocking or fenced (OpOptions): with `blocking` the answer comes after the op
// completed; otherwise it comes once the daemon has started it and `signal` tells completion.
// "Started" means after the op's `wait` fence and, for the collective Dispatch and Combine,
// once every rank of the group posted its own. So a frontend that signals an op's wait fence
// only after posting it must post with the *Async forms (the synchronous forms would wait for
// an answer that needs the signal first).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <future>
#include <memory>
#include <optional>
#include <string>

#include "client/epd/fence.h"
#include "client/epd/options.h"
#include "common/status.h"
#include "epd/v1/epd.grpc.pb.h"

namespace epd {

namespace internal {
class SessionStream;
}

class Session {
 public:
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  uint64_t id() const { return id_; }
  // The session's secret (16 hex digits) that every call of this object sends; needed only
  // for a hand-made call on the raw stub (metadata header "epd-session-secret"). A credential:
  // keep it inside the process.
  const std::string& secret() const { return secret_; }
  int rank() const { return rank_; }
  bool closed() const { return closed_; }

  // Ends the session; later ops fail with FAILED_PRECONDITION. Idempotent.
  Status Close();

  // --- memory ---
  StatusOr<uint64_t> RegisterBuffer(const v1::MemorySource& source);
  Status ReleaseBuffer(uint64_t buffer_id);
  // Creates a fence and maps its page.
  StatusOr<std::unique_ptr<Fence>> CreateFence();
  Status DestroyFence(uint64_t fence_id);

  // --- groups (owned by this session unless persistent) ---
  StatusOr<v1::GroupConfig> CreateGroup(const v1::GroupConfig& config, bool persistent = false);
  Status DestroyGroup(const std::string& name);

  // --- handles (of this session's rank); HandleView::Open maps the answer ---
  StatusOr<v1::HandleInfo> CreateHandle(const std::string& group, const std::string& name = "",
                                        bool persistent = false);
  // The full request (session_id is filled in), e.g. to set the optional rank field.
  StatusOr<v1::HandleInfo> CreateHandle(v1::CreateHandleRequest request);
  StatusOr<v1::HandleInfo> AttachHandle(const std::string& name);
  Status DestroyHandle(uint64_t handle_id);
  // The frontend-launched data path (client/epd/data_path.h): the daemon stops running this
  // handle's group's ops and describes what to map; FrontendOps (client/epd/frontend_ops.h)
  // maps it and launches the kernels. The answer is checked (ValidateDataPlaneInfo).
  // `reset_epoch`: after FrontendOps::TakeErrors reported a peer timeout, the epoch it
  // happened in (FrontendOps::epoch()): the group restarts numbering on every rank.
  StatusOr<v1::DataPlaneInfo> AttachDataPlane(uint64_t handle_id, uint64_t reset_epoch = 0);

  // --- ops on the stream; each waits for its answer up to ClientOptions::op_timeout ---
  // topk_idx [n, K] int32/int64; weights [n, K] f32 or none (all 1).
  Status Update(uint64_t handle_id, const v1::TensorRef& topk_idx,
                const std::optional<v1::TensorRef>& weights, const v1::OpOptions& options);
  // x [n, H] group dtype, n = tokens of the last Update.
  Status Dispatch(uint64_t handle_id, const v1::TensorRef& x, const v1::OpOptions& options);
  // out [n, H]; expert_out [recv_rows, H] or none (the handle's recv_x, in place).
  Status Combine(uint64_t handle_id, const v1::TensorRef& out,
                 const std::optional<v1::TensorRef>& expert_out, const v1::OpOptions& options);

  // Asynchronous forms taking full requests (session_id is filled in). The future never
  // throws; it is ready when the daemon answered or the stream ended.
  std::future<Status> UpdateAsync(v1::UpdateHandleRequest request);
  std::future<Status> DispatchAsync(v1::DispatchRequest request);
  std::future<Status> CombineAsync(v1::CombineRequest request);
  // Waits for an async answer up to op_timeout (DEADLINE_EXCEEDED naming `what` after it).
  Status Await(std::future<Status>& answer, std::string_view what) const;

 private:
  friend class Client;
  Session() = default;
  std::future<Status> Post(v1::SessionRequest request);
  Status CheckOpen() const;
  // A unary call of this session: the client's deadline, and the session's secret.
  template <typename Request, typename Response>
  Status Call(grpc::Status (v1::Epd::Stub::*method)(grpc::ClientContext*, const Request&,
                                                    Response*),
              const Request& request, Response* response) const;

  std::shared_ptr<v1::Epd::Stub> stub_;
  ClientOptions options_;
  std::unique_ptr<internal::SessionStream> stream_;
  uint64_t id_ = 0;
  std::string secret_;
  int rank_ = -1;
  std::atomic<bool> closed_{false};
};

}  // namespace epd
