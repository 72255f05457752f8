// OpPipeline: how a validated op runs. It is queued on its session rank's worker (ops of one
// lane, a group's rank, never overtake each other), waits for its fence, is enqueued on the
// backend's stream of that lane (a collective never waits for its peers here: ranks meet on
// the streams), signals its fence and reports: at once for non-blocking ops, after device
// completion for blocking ones. A device error reported later fails the next op on the handle
// (HandleOutcomes). An op with a deferred part (Backend::HasDeferred) holds its lane's later
// ops until the part is enqueued; other lanes go on.
//
// The pipeline counts ops in flight for the drain at shutdown, keeps the op counters, and
// calls EngineOptions::on_op_finished once per op.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "daemon/core/backend.h"
#include "daemon/core/engine.h"
#include "daemon/core/log_rate_limiter.h"
#include "daemon/core/op_stats.h"
#include "daemon/core/rank_worker.h"
#include "daemon/core/session_table.h"

namespace epd {

// Everything one op needs once validated; its references keep session objects alive.
struct OpContext {
  std::shared_ptr<Session> session;
  std::shared_ptr<Handle> handle;
  std::shared_ptr<Fence> wait_fence, signal_fence;
  OpOptions options;
  uint64_t payload_bytes = 0;                          // tokens moved (dispatch, combine)
  std::function<void(const Status&)> on_device_error;  // set by the op body when it cares
  // The op's tensors' buffers: kept until the op completed on the device.
  std::vector<std::shared_ptr<const void>> keepalive;
  // Set once the worker handed the op to the backend: counted in Session::ops_running until
  // the backend's lane passed it.
  std::shared_ptr<std::atomic<bool>> started = std::make_shared<std::atomic<bool>>(false);
};

// One rank's collective, as its worker hands it to the backend.
struct CollectiveOp {
  CollectiveKind kind = CollectiveKind::kDispatch;
  DispatchArgs dispatch;
  CombineArgs combine;
};

class OpPipeline {
 public:
  using OpFinished = std::function<void(const OpRecord&)>;
  // `ops_in_flight_limit`: ops one session may have accepted and not yet answered
  // (limits.ops_in_flight_per_session); beyond it a post answers RESOURCE_EXHAUSTED.
  OpPipeline(Backend& backend, int ranks, uint64_t ops_in_flight_limit,
             OpFinished on_op_finished);
  ~OpPipeline();  // runs what is queued (cancelled ops), then joins the workers

  // Queues an UpdateHandle of `ctx.handle` with validated `args`.
  Status PostUpdate(OpContext ctx, UpdateArgs args, OpDone done);
  // Queues a dispatch or combine with this rank's validated arguments.
  Status PostCollective(OpContext ctx, CollectiveOp op, OpDone done);

  // Refuses new ops (UNAVAILABLE), then waits up to `timeout` for those in flight.
  bool StopAndWaitIdle(std::chrono::milliseconds timeout);
  uint64_t in_flight() const;
  // DEADLINE_EXCEEDED naming a rank worker busy with one op for longer than `limit`.
  Status CheckLiveness(std::chrono::milliseconds limit) const;
  // Runs what is still queued (cancelled ops), then joins the workers.
  void JoinWorkers() { workers_.clear(); }
  const OpStats& stats() const { return stats_; }

 private:
  // What a worker runs for one op: it must call `finish` once and then `release`.
  using WorkerTask = std::function<void(OpContext&, OpDone finish, std::function<void()> release)>;

  OpDone FinishOnce(const OpContext& ctx, OpKind kind, OpDone done);
  Status Enqueue(OpContext ctx, OpKind kind, OpDone done, WorkerTask task);
  // Resumes a held lane with `first` (any thread): false when the workers were joined
  // meanwhile, and `first` never runs.
  using LaneResumer = std::function<bool(std::function<void()>)>;
  // On the worker: the op's lane's later ops wait until it is resumed.
  void HoldLane(const OpContext& ctx);
  LaneResumer ResumerOf(const OpContext& ctx) const;
  void RunCollectiveOp(OpContext& ctx, const CollectiveOp& op, OpDone finish,
                       std::function<void()> release);
  void RunPreparedOp(OpContext& ctx, const CollectiveOp& op, const Status& prepared, OpDone finish,
                     std::function<void()> release);
  Status WaitFenceIfAny(OpContext& ctx);
  // The op's signal for a backend that folds it into the op (else none: CompleteOp signals).
  FenceSignal FoldedSignal(const OpContext& ctx) const;
  void CompleteOp(OpContext& ctx, Status status, OpDone finish, std::function<void()> release);

  Backend& backend_;
  const uint64_t ops_in_flight_limit_;
  const OpFinished on_op_finished_;
  OpStats stats_;
  // Failed ops are logged at warn: 20 lines per 10 s at most.
  LogRateLimiter failure_log_limiter_{20, std::chrono::seconds(10)};
  mutable std::mutex mutex_;  // guards the two below
  std::condition_variable idle_;
  uint64_t in_flight_ = 0;
  bool accepting_ = true;
  std::vector<std::shared_ptr<RankWorker>> workers_;  // last: joined first
};

}  // namespace epd
