// Engine::Impl: op submission. Each op is looked up in its session, checked once by the
// validation layer (op_validation.h) and handed to the pipeline; nothing here waits.
#include "daemon/core/engine_impl.h"
#include "daemon/core/op_validation.h"

namespace epd {

StatusOr<OpContext> Engine::Impl::PrepareOpLocked(const std::shared_ptr<Session>& session,
                                                  ObjectId handle_id, int rank,
                                                  const OpOptions& options) {
  if (session->closed) {
    return NotFoundError("session_id = {} is not an open session", session->id);
  }
  EPD_RETURN_IF_ERROR(CheckRequestRank(rank, session->rank));
  OpContext ctx;
  ctx.session = session;
  auto hit = session->handles.find(handle_id);
  if (hit == session->handles.end()) {
    return NotFoundError("handle_id = {} is not a handle of this session", handle_id);
  }
  ctx.handle = hit->second;
  {
    Group& group = *ctx.handle->group;
    std::lock_guard lock(group.data_plane_mutex);
    if (group.data_plane != nullptr && group.data_plane->any_launched()) {
      return FailedPreconditionError(
          "group '{}' is frontend-launched: its frontends launch update, dispatch and combine "
          "themselves (AttachDataPlane); the daemon runs none of its ops",
          group.config.name);
    }
  }
  ctx.options = options;
  auto find_fence = [&](const std::optional<FenceOp>& op, std::string_view field,
                        std::shared_ptr<Fence>* out) -> Status {
    if (!op.has_value()) return OkStatus();
    auto fit = session->fences.find(op->fence_id);
    if (fit == session->fences.end()) {
      return NotFoundError("{}.fence_id = {} is not a fence of this session", field,
                           op->fence_id);
    }
    *out = fit->second;
    return OkStatus();
  };
  EPD_RETURN_IF_ERROR(find_fence(options.wait, "options.wait", &ctx.wait_fence));
  EPD_RETURN_IF_ERROR(find_fence(options.signal, "options.signal", &ctx.signal_fence));
  return ctx;
}

// Resolves `ref` in the op's session and keeps its buffer alive until the op completed on the
// device (a release by the frontend meanwhile only drops the session's reference).
StatusOr<TensorView> Engine::Impl::ResolveKeptLocked(OpContext& ctx, const TensorRef& ref,
                                                     std::string_view field) {
  EPD_ASSIGN_OR_RETURN(TensorView view, ctx.session->buffers.Resolve(ref, field));
  ctx.keepalive.push_back(ctx.session->buffers.Find(ref.buffer_id));
  return view;
}

// A [tokens bound by the last update, hidden] tensor of the group's dtype, kept alive.
StatusOr<TensorView> Engine::Impl::ResolveTokenRowsLocked(OpContext& ctx, const TensorRef& ref,
                                                          std::string_view field) {
  EPD_ASSIGN_OR_RETURN(TensorView view, ResolveKeptLocked(ctx, ref, field));
  EPD_RETURN_IF_ERROR(ValidateTokenRows(ctx.handle->group->config, view, field,
                                        ctx.handle->submitted_tokens.load()));
  return view;
}

Status Engine::Impl::ResolveDispatchInputLocked(OpContext& ctx, const DispatchRequest& request,
                                                CollectiveOp& op) {
  const GroupConfig& config = ctx.handle->group->config;
  EPD_RETURN_IF_ERROR(
      ValidateDispatchInputKind(config, request.x.dtype, request.x_scales.has_value()));
  if (!request.x_scales.has_value()) {
    EPD_ASSIGN_OR_RETURN(op.dispatch.x, ResolveTokenRowsLocked(ctx, request.x, "x"));
    return OkStatus();
  }
  const int bound_tokens = ctx.handle->submitted_tokens.load();
  EPD_ASSIGN_OR_RETURN(op.dispatch.x, ResolveKeptLocked(ctx, request.x, "x"));
  EPD_RETURN_IF_ERROR(ValidatePrequantizedX(config, op.dispatch.x, bound_tokens));
  EPD_ASSIGN_OR_RETURN(op.dispatch.x_scales, ResolveKeptLocked(ctx, *request.x_scales, "x_scales"));
  return ValidateXScales(config, op.dispatch.x_scales, bound_tokens);
}

Status Engine::Impl::SubmitUpdate(SessionId id, const UpdateRequest& request,
                                  const OpOptions& options, OpDone done) {
  EPD_ASSIGN_OR_RETURN(std::shared_ptr<Session> session, sessions_.Find(id));
  std::lock_guard lock(session->mutex);
  EPD_ASSIGN_OR_RETURN(OpContext ctx,
                       PrepareOpLocked(session, request.handle_id, request.rank, options));
  UpdateArgs args;
  EPD_ASSIGN_OR_RETURN(args.topk_idx, ResolveKeptLocked(ctx, request.topk_idx, "topk_idx"));
  if (request.topk_weights.has_value()) {
    EPD_ASSIGN_OR_RETURN(args.topk_weights,
                         ResolveKeptLocked(ctx, *request.topk_weights, "topk_weights"));
  }
  EPD_ASSIGN_OR_RETURN(args.num_tokens,
                       ValidateUpdate(ctx.handle->group->config, args.topk_idx,
                                      request.topk_weights.has_value() ? &args.topk_weights
                                                                       : nullptr));
  ctx.handle->submitted_tokens = args.num_tokens;
  ctx.handle->dispatch_posted = false;
  return pipeline_->PostUpdate(std::move(ctx), std::move(args), std::move(done));
}

StatusOr<OpContext> Engine::Impl::PrepareCollectiveLocked(const std::shared_ptr<Session>& session,
                                                          ObjectId handle_id, int rank,
                                                          const OpOptions& options) {
  EPD_ASSIGN_OR_RETURN(OpContext ctx, PrepareOpLocked(session, handle_id, rank, options));
  if (!ctx.handle->bound()) {
    return FailedPreconditionError("handle_id = {} has no routing: call UpdateHandle first",
                                   handle_id);
  }
  return ctx;
}

Status Engine::Impl::SubmitDispatch(SessionId id, const DispatchRequest& request,
                                    const OpOptions& options, OpDone done) {
  EPD_ASSIGN_OR_RETURN(std::shared_ptr<Session> session, sessions_.Find(id));
  std::lock_guard lock(session->mutex);
  EPD_ASSIGN_OR_RETURN(OpContext ctx,
                       PrepareCollectiveLocked(session, request.handle_id, request.rank, options));
  CollectiveOp op;
  op.kind = CollectiveKind::kDispatch;
  EPD_RETURN_IF_ERROR(ResolveDispatchInputLocked(ctx, request, op));
  ctx.payload_bytes = static_cast<uint64_t>(op.dispatch.x.rows()) *
                      ctx.handle->group->config.hidden * DTypeSize(op.dispatch.x.dtype);
  if (op.dispatch.x_scales.data != nullptr) {
    ctx.payload_bytes += static_cast<uint64_t>(op.dispatch.x_scales.rows()) *
                         ctx.handle->group->config.scale_row_bytes();
  }
  Handle& handle = *ctx.handle;
  EPD_RETURN_IF_ERROR(pipeline_->PostCollective(std::move(ctx), std::move(op), std::move(done)));
  handle.dispatch_posted = true;
  return OkStatus();
}

Status Engine::Impl::SubmitCombine(SessionId id, const CombineRequest& request,
                                   const OpOptions& options, OpDone done) {
  EPD_ASSIGN_OR_RETURN(std::shared_ptr<Session> session, sessions_.Find(id));
  std::lock_guard lock(session->mutex);
  EPD_ASSIGN_OR_RETURN(OpContext ctx,
                       PrepareCollectiveLocked(session, request.handle_id, request.rank, options));
  const GroupConfig& config = ctx.handle->group->config;
  CollectiveOp op;
  op.kind = CollectiveKind::kCombine;
  const HandleLayout& layout = ctx.handle->backend->layout();
  if (request.expert_out.has_value()) {
    EPD_ASSIGN_OR_RETURN(TensorView expert_out,
                         ResolveKeptLocked(ctx, *request.expert_out, "expert_out"));
    EPD_RETURN_IF_ERROR(ValidateExpertOut(config, layout, expert_out));
    op.combine.expert_out = expert_out.data;
  } else {
    EPD_RETURN_IF_ERROR(ValidateInPlaceCombine(config));
    op.combine.expert_out =
        static_cast<char*>(ctx.handle->backend->exported().data()) + layout.recv_x_offset;
  }
  EPD_ASSIGN_OR_RETURN(op.combine.out, ResolveTokenRowsLocked(ctx, request.out, "out"));
  // Known at submission: answered now rather than after waiting for peers.
  if (!ctx.handle->dispatch_posted) {
    return FailedPreconditionError(
        "handle_id = {}: no Dispatch was submitted since the last UpdateHandle: dispatch "
        "before combine",
        request.handle_id);
  }
  ctx.payload_bytes = static_cast<uint64_t>(op.combine.out.rows()) * config.hidden *
                      DTypeSize(op.combine.out.dtype);
  return pipeline_->PostCollective(std::move(ctx), std::move(op), std::move(done));
}

}  // namespace epd
