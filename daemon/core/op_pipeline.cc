#include "daemon/core/op_pipeline.h"

#include "daemon/core/log.h"

namespace epd {
namespace {

// An op counts in its session's ops_running from when its worker handed it to the backend
// until its answer (blocking) or its lane passing it, whichever comes first; once.
void StopRunning(Session& session, std::atomic<bool>& started) {
  if (started.exchange(false)) session.ops_running.fetch_sub(1);
}

// An op that cannot run (its worker stopped: `run` false; its session ended) is answered and
// released here, and true returned.
bool Cancelled(const OpContext& ctx, bool run, const OpDone& finish,
               const std::function<void()>& release) {
  if (run && !ctx.session->closed) return false;
  finish(run ? CancelledError("session {} ended before the op ran", ctx.session->id)
             : UnavailableError("epd stopped before the op ran"));
  release();
  return true;
}

// The backend stream a handle's ops go to: one per (group, group rank).
RankWorker::Lane LaneOf(const Handle& handle) {
  return RankWorker::Lane{handle.group.get(), handle.group_rank};
}

}  // namespace

OpPipeline::OpPipeline(Backend& backend, int ranks, uint64_t ops_in_flight_limit,
                       OpFinished on_op_finished)
    : backend_(backend),
      ops_in_flight_limit_(ops_in_flight_limit),
      on_op_finished_(std::move(on_op_finished)) {
  for (int r = 0; r < ranks; ++r) workers_.push_back(std::make_shared<RankWorker>(r));
}

OpPipeline::~OpPipeline() { workers_.clear(); }

bool OpPipeline::StopAndWaitIdle(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  accepting_ = false;
  return idle_.wait_for(lock, timeout, [this] { return in_flight_ == 0; });
}

uint64_t OpPipeline::in_flight() const {
  std::lock_guard lock(mutex_);
  return in_flight_;
}

Status OpPipeline::CheckLiveness(std::chrono::milliseconds limit) const {
  for (size_t r = 0; r < workers_.size(); ++r) {
    const auto busy = workers_[r]->busy_for();
    if (busy > limit) {
      return DeadlineExceededError(
          "the worker of rank {} has run one op for {} ms (limit {} ms)", r,
          std::chrono::duration_cast<std::chrono::milliseconds>(busy).count(), limit.count());
    }
  }
  return OkStatus();
}

// Wraps `done` so that it is called once, after the counters are updated.
OpDone OpPipeline::FinishOnce(const OpContext& ctx, OpKind kind, OpDone done) {
  const Clock::time_point start = Clock::now();
  return [this, kind, start, session = ctx.session, handle = ctx.handle,
          payload_bytes = ctx.payload_bytes, done = std::move(done)](Status status) {
    const auto us = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start);
    if (!status.ok()) {
      uint64_t suppressed = 0;
      if (failure_log_limiter_.Allow(&suppressed)) {
        EPD_LOG(kCore, warn, "{} on group '{}' rank {} (session {}) failed: {}{}",
                OpKindName(kind), handle->group->config.name, session->rank, session->id,
                status.ToString(),
                suppressed == 0 ? "" : fmt::format(" ({} more op failures not logged)", suppressed));
      }
    }
    stats_.For(kind).Add(status.ok(), us);
    (status.ok() ? session->ops_completed : session->ops_failed).fetch_add(1);
    session->ops_in_flight.fetch_sub(1);
    if (on_op_finished_) {
      OpRecord record;
      record.kind = OpKindName(kind);
      record.group = handle->group->config.name;
      record.rank = session->rank;
      record.code = status.code();
      record.host_time = us;
      record.payload_bytes = status.ok() ? payload_bytes : 0;
      on_op_finished_(record);
    }
    done(std::move(status));
  };
}

// Queues `task` on the session rank's worker, counting the op as in flight until released.
// An op whose session ended before it ran is cancelled there.
Status OpPipeline::Enqueue(OpContext ctx, OpKind kind, OpDone done, WorkerTask task) {
  {
    std::lock_guard lock(mutex_);
    if (!accepting_) return UnavailableError("epd is shutting down");
    ++in_flight_;
  }
  const uint64_t held = ctx.session->ops_in_flight.fetch_add(1);
  if (Status full = CheckLimit(held, 1, ops_in_flight_limit_, "ops in flight",
                               "limits.ops_in_flight_per_session");
      !full.ok()) {
    ctx.session->ops_in_flight.fetch_sub(1);
    std::lock_guard lock(mutex_);
    if (--in_flight_ == 0) idle_.notify_all();
    return full;
  }
  OpDone finish = FinishOnce(ctx, kind, std::move(done));
  std::function<void()> release = [this, session = ctx.session, started = ctx.started] {
    StopRunning(*session, *started);
    std::lock_guard lock(mutex_);
    if (--in_flight_ == 0) idle_.notify_all();
  };
  const int rank = ctx.session->rank;
  const RankWorker::Lane lane = LaneOf(*ctx.handle);
  const bool posted = workers_[rank]->Post(lane, [ctx, finish, release, task](bool run) mutable {
    if (Cancelled(ctx, run, finish, release)) return;
    task(ctx, std::move(finish), std::move(release));
  });
  if (!posted) {
    ctx.session->ops_in_flight.fetch_sub(1);  // `finish` is not called
    release();
    return UnavailableError("epd is shutting down");
  }
  return OkStatus();
}

Status OpPipeline::PostUpdate(OpContext ctx, UpdateArgs args, OpDone done) {
  return Enqueue(
      std::move(ctx), OpKind::kUpdate, std::move(done),
      [this, args](OpContext& c, OpDone finish, std::function<void()> release) {
        Status status = WaitFenceIfAny(c);
        if (status.ok()) {
          Handle& handle = *c.handle;
          const uint64_t op = handle.outcomes.BeginOp();
          UpdateArgs update = args;
          update.signal = FoldedSignal(c);
          status = backend_.UpdateHandle(*handle.backend, update);
          handle.outcomes.RecordRouting(op, status);
          std::shared_ptr<Handle> keep = c.handle;
          c.on_device_error = [keep, op](const Status& error) {
            keep->outcomes.RoutingDeviceError(op, error);
          };
        }
        CompleteOp(c, std::move(status), std::move(finish), std::move(release));
      });
}

// ---------------------------------------------------------------- collective path
// A rank's collective goes to the backend as soon as its worker reaches it: the worker never
// waits for peers. The ranks meet on the backend's streams, where a late peer only delays
// the device, a missing one fails the op after op_timeout naming it, and an ended session
// (AbortGroup when a session closes) releases the wait at once. A rank that cannot take part
// (failed wait fence or routing) abandons the op's sequence number so its peers fail now.
// Submit-time validation errors never reach here: such an op takes no sequence number.
Status OpPipeline::PostCollective(OpContext ctx, CollectiveOp op, OpDone done) {
  const OpKind kind = op.kind == CollectiveKind::kDispatch ? OpKind::kDispatch : OpKind::kCombine;
  return Enqueue(
      std::move(ctx), kind, std::move(done),
      [this, op = std::move(op)](OpContext& c, OpDone finish, std::function<void()> release) {
        RunCollectiveOp(c, op, std::move(finish), std::move(release));
      });
}

void OpPipeline::HoldLane(const OpContext& ctx) {
  workers_[ctx.session->rank]->Hold(LaneOf(*ctx.handle));
}

// NOTE: a weak reference to the worker: the workers are joined before the backend's last
// callbacks, and a resume after that fails (the daemon is stopping).
OpPipeline::LaneResumer OpPipeline::ResumerOf(const OpContext& ctx) const {
  return [weak = std::weak_ptr<RankWorker>(workers_[ctx.session->rank]),
          lane = LaneOf(*ctx.handle)](std::function<void()> first) {
    const std::shared_ptr<RankWorker> worker = weak.lock();
    return worker != nullptr && worker->Resume(lane, std::move(first));
  };
}

// A preparation that takes long (a communicator's formation) runs off the worker, with the
// op's lane held until it ended; the op then runs from the resumed lane, or is cancelled
// when the daemon stopped meanwhile.
void OpPipeline::RunCollectiveOp(OpContext& ctx, const CollectiveOp& op, OpDone finish,
                                 std::function<void()> release) {
  const bool background = backend_.PrepareInBackground(
      *ctx.handle->backend, op.kind,
      [this, resume = ResumerOf(ctx), ctx, op, finish, release](const Status& prepared) {
        const bool resumed = resume([this, ctx, op, finish, release, prepared]() mutable {
          if (Cancelled(ctx, /*run=*/true, finish, release)) return;
          RunPreparedOp(ctx, op, prepared, std::move(finish), std::move(release));
        });
        if (!resumed) Cancelled(ctx, /*run=*/false, finish, release);
      });
  if (background) {
    HoldLane(ctx);
    return;
  }
  RunPreparedOp(ctx, op, OkStatus(), std::move(finish), std::move(release));
}

// `prepared`: the outcome of the op's preparation in the background, if it had one.
void OpPipeline::RunPreparedOp(OpContext& ctx, const CollectiveOp& op, const Status& prepared,
                               OpDone finish, std::function<void()> release) {
  Handle& handle = *ctx.handle;
  const uint64_t number = handle.outcomes.BeginOp();
  Status status = prepared;
  if (status.ok()) status = backend_.PrepareCollective(*handle.backend);
  if (status.ok()) status = WaitFenceIfAny(ctx);
  if (status.ok()) status = handle.outcomes.CheckReadyFor(op.kind);
  if (!status.ok()) {
    backend_.Abandon(*handle.backend, op.kind, status);
    status = Status(status.code(),
                    fmt::format("group '{}' {}: group rank {}: {}", handle.group->config.name,
                                CollectiveKindName(op.kind), handle.group_rank, status.message()));
  } else if (op.kind == CollectiveKind::kDispatch) {
    DispatchArgs dispatch = op.dispatch;
    dispatch.signal = FoldedSignal(ctx);
    status = backend_.Dispatch(*handle.backend, dispatch);
  } else {
    CombineArgs combine = op.combine;
    combine.signal = FoldedSignal(ctx);
    status = backend_.Combine(*handle.backend, combine);
  }
  if (op.kind == CollectiveKind::kDispatch) {
    handle.outcomes.RecordDispatch(number, status);
    std::shared_ptr<Handle> keep_handle = ctx.handle;
    ctx.on_device_error = [keep_handle, number](const Status& error) {
      keep_handle->outcomes.DispatchDeviceError(number, error);
    };
  }
  CompleteOp(ctx, std::move(status), std::move(finish), std::move(release));
}

FenceSignal OpPipeline::FoldedSignal(const OpContext& ctx) const {
  if (!ctx.options.signal.has_value() || !backend_.FoldsFenceSignals()) return FenceSignal{};
  return FenceSignal{ctx.signal_fence->page.get(), ctx.options.signal->value};
}

Status OpPipeline::WaitFenceIfAny(OpContext& ctx) {
  if (!ctx.options.wait.has_value()) return OkStatus();
  return backend_.WaitFence(*ctx.handle->backend, *ctx.wait_fence->page,
                            ctx.options.wait->value);
}

// Signals, then reports: immediately for fenced ops, after device completion for blocking
// ones. Device-side errors of non-blocking ops are logged and fail the next op on the handle.
void OpPipeline::CompleteOp(OpContext& ctx, Status status, OpDone finish,
                            std::function<void()> release) {
  // NOTE: before `release`, which uncounts it once the lane passed the op.
  if (!ctx.started->exchange(true)) ctx.session->ops_running.fetch_add(1);
  if (status.ok() && ctx.options.signal.has_value() && !backend_.FoldsFenceSignals()) {
    status = backend_.SignalFence(*ctx.handle->backend, *ctx.signal_fence->page,
                                  ctx.options.signal->value);
  }
  // A failed op is answered now; it still releases its buffers only after the stream
  // passed it (an earlier part of it, e.g. the fence wait, may be queued there).
  const bool failed = !status.ok();
  const bool blocking = ctx.options.blocking && !failed;
  if (!blocking) finish(std::move(status));
  std::shared_ptr<Handle> handle = ctx.handle;
  auto on_device_error = std::move(ctx.on_device_error);
  // Inputs, outputs and fences stay alive until the device is done with them.
  auto keep = std::make_shared<OpContext>(ctx);
  // Once the device is done with the op (or it failed).
  auto conclude = [handle, keep, blocking, finish, release, on_device_error](Status done) {
    if (!done.ok() && on_device_error) on_device_error(done);
    if (blocking) {
      // NOTE: uncounted before the answer, so a client that got it never
      // sees the op as running (tests wait on ops_running).
      StopRunning(*keep->session, *keep->started);
      finish(std::move(done));
    } else if (!done.ok()) {
      EPD_LOG(kCore, error, "group '{}' rank {}: asynchronous op failed: {}",
              handle->group->config.name, handle->node_rank, done.ToString());
    }
    release();
  };
  if (!backend_.HasDeferred(*handle->backend)) {
    backend_.Complete(*handle->backend, std::move(conclude));
    return;
  }
  // The deferred part needs what the device did so far (the op's wait fence, which the
  // frontend may signal only now that the op is answered): the lane's later ops wait for it,
  // the rank's other lanes' ops do not (backend.h). When the daemon stopped meanwhile the op
  // concludes without a deferred part.
  HoldLane(ctx);
  backend_.Complete(*handle->backend, [this, resume = ResumerOf(ctx), handle,
                                       conclude](const Status& first) {
    const bool resumed = resume([this, handle, conclude, first] {
      const Status deferred = backend_.EnqueueDeferred(*handle->backend);
      backend_.Complete(*handle->backend, [first, deferred, conclude](const Status& rest) {
        // The cause, before what it led to.
        conclude(!first.ok() ? first : !deferred.ok() ? deferred : rest);
      });
    });
    if (!resumed) {
      conclude(!first.ok() ? first
                           : UnavailableError("epd stopped before the op's deferred part ran"));
    }
  });
}

}  // namespace epd
