#include "daemon/core/op_pipeline.h"

#include "daemon/core/log.h"

namespace epd {

OpPipeline::OpPipeline(Backend& backend, int ranks, OpFinished on_op_finished)
    : backend_(backend), on_op_finished_(std::move(on_op_finished)) {
  for (int r = 0; r < ranks; ++r) workers_.push_back(std::make_unique<RankWorker>(r));
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

// Wraps `done` so that it is called once, after the counters are updated.
OpDone OpPipeline::FinishOnce(const OpContext& ctx, OpKind kind, OpDone done) {
  const Clock::time_point start = Clock::now();
  return [this, kind, start, session = ctx.session, handle = ctx.handle,
          payload_bytes = ctx.payload_bytes, done = std::move(done)](Status status) {
    const auto us = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start);
    if (!status.ok()) EPD_LOG(kCore, debug, "op failed: {}", status.ToString());
    stats_.For(kind).Add(status.ok(), us);
    (status.ok() ? session->ops_completed : session->ops_failed).fetch_add(1);
    if (on_op_finished_) {
      OpRecord record;
      record.kind = OpKindName(kind);
      record.group = handle->group->config.name;
      record.rank = session->rank;
      record.code = status.code();
      record.host_time = us;
      record.payload_bytes = payload_bytes;
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
  OpDone finish = FinishOnce(ctx, kind, std::move(done));
  std::function<void()> release = [this] {
    std::lock_guard lock(mutex_);
    if (--in_flight_ == 0) idle_.notify_all();
  };
  const int rank = ctx.session->rank;
  const bool posted = workers_[rank]->Post([ctx, finish, release, task]() mutable {
    if (ctx.session->closed) {
      finish(CancelledError("session {:016x} ended before the op ran", ctx.session->id));
      release();
      return;
    }
    task(ctx, std::move(finish), std::move(release));
  });
  if (!posted) {
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
          status = backend_.UpdateHandle(*handle.backend, args);
          handle.outcomes.RecordRouting(op, status);
          std::shared_ptr<Handle> keep = c.handle;
          c.on_device_error = [keep, op](const Status& error) {
            keep->outcomes.RoutingDeviceError(op, error);
          };
        }
        CompleteOp(c, std::move(status), nullptr, std::move(finish), std::move(release));
      });
}

// A collective: after the wait fence, it is matched with the other ranks' op and run.
Status OpPipeline::PostCollective(OpContext ctx, OpKind kind,
                                  std::shared_ptr<CollectivePayload> payload, OpDone done) {
  payload->keepalive.push_back(ctx.handle);
  return Enqueue(std::move(ctx), kind, std::move(done),
                 [this, payload](OpContext& c, OpDone finish, std::function<void()> release) {
                   RunCollectiveOp(c, payload, std::move(finish), std::move(release));
                 });
}

void OpPipeline::RunCollectiveOp(OpContext& ctx, const std::shared_ptr<CollectivePayload>& payload,
                                 OpDone finish, std::function<void()> release) {
  Handle& handle = *ctx.handle;
  Group& group = *handle.group;
  const uint64_t op = handle.outcomes.BeginOp();
  payload->status = WaitFenceIfAny(ctx);
  if (payload->status.ok()) payload->status = handle.outcomes.CheckReadyFor(payload->kind);
  const Deadline deadline = Clock::now() + backend_.op_timeout();
  StatusOr<MatchedCollective> matched =
      group.matcher->Arrive(handle.group_rank, payload, deadline);
  Status status =
      matched.ok() ? RunCollective(group, handle.group_rank, *matched) : matched.status();
  if (payload->kind == CollectiveKind::kDispatch) {
    handle.outcomes.RecordDispatch(op, status);
    std::shared_ptr<Handle> keep_handle = ctx.handle;
    ctx.on_device_error = [keep_handle, op](const Status& error) {
      keep_handle->outcomes.DispatchDeviceError(op, error);
    };
  }
  std::shared_ptr<MatchedCollective> keep;
  if (matched.ok()) keep = std::make_shared<MatchedCollective>(std::move(matched).value());
  CompleteOp(ctx, std::move(status), std::move(keep), std::move(finish), std::move(release));
}

Status OpPipeline::RunCollective(Group& group, int group_rank, const MatchedCollective& matched) {
  for (size_t r = 0; r < matched.size(); ++r) {
    if (!matched[r]->status.ok()) {
      return Status(
          matched[r]->status.code(),
          fmt::format("group '{}' {}: group rank {}: {}", group.config.name,
                      CollectiveKindName(matched[r]->kind), r, matched[r]->status.message()));
    }
  }
  if (matched[group_rank]->kind == CollectiveKind::kDispatch) {
    std::vector<DispatchArgs> all;
    for (const auto& p : matched) all.push_back(p->dispatch);
    return backend_.Dispatch(*group.backend, group_rank, all);
  }
  std::vector<CombineArgs> all;
  for (const auto& p : matched) all.push_back(p->combine);
  return backend_.Combine(*group.backend, group_rank, all);
}

Status OpPipeline::WaitFenceIfAny(OpContext& ctx) {
  if (!ctx.options.wait.has_value()) return OkStatus();
  return backend_.WaitFence(ctx.session->rank, *ctx.wait_fence->page, ctx.options.wait->value);
}

// Signals, then reports: immediately for fenced ops, after device completion for blocking
// ones. Device-side errors of non-blocking ops are logged and fail the next op on the handle.
void OpPipeline::CompleteOp(OpContext& ctx, Status status, std::shared_ptr<MatchedCollective> keep,
                            OpDone finish, std::function<void()> release) {
  if (status.ok() && ctx.options.signal.has_value()) {
    status = backend_.SignalFence(ctx.session->rank, *ctx.signal_fence->page,
                                  ctx.options.signal->value);
  }
  if (!status.ok()) {
    finish(std::move(status));
    release();
    return;
  }
  if (!ctx.options.blocking) finish(OkStatus());
  const bool blocking = ctx.options.blocking;
  std::shared_ptr<Handle> handle = ctx.handle;
  auto on_device_error = std::move(ctx.on_device_error);
  backend_.Complete(*handle->backend,
                    [handle, keep, blocking, finish, release, on_device_error](Status done) {
                      if (!done.ok() && on_device_error) on_device_error(done);
                      if (blocking) {
                        finish(std::move(done));
                      } else if (!done.ok()) {
                        EPD_LOG(kCore, error, "group '{}' rank {}: asynchronous op failed: {}",
                                handle->group->config.name, handle->node_rank, done.ToString());
                      }
                      release();
                    });
}

}  // namespace epd
