#include "client/examples/rank_runner.h"

#include <cstring>
#include <future>

#include "common/align.h"

namespace epd::example {

StatusOr<std::unique_ptr<RankRunner>> RankRunner::Create(Client& client, const Problem& problem,
                                                         int rank, RankRunnerOptions options) {
  auto runner = std::unique_ptr<RankRunner>(new RankRunner());
  runner->problem_ = problem;
  runner->rank_ = rank;
  runner->options_ = options;
  const int session_rank = options.session_rank >= 0 ? options.session_rank : rank;
  EPD_ASSIGN_OR_RETURN(runner->session_, client.OpenSession(session_rank,
                                                            fmt::format("moe-frontend-rank{}", rank)));
  Session& session = *runner->session_;

  // Every rank creates the group; the daemon makes this idempotent for an identical shape.
  // Two ranks racing may see ALREADY_EXISTS once: the retry then finds the group.
  const v1::GroupConfig config = problem.Config(options.group);
  StatusOr<v1::GroupConfig> group = session.CreateGroup(config, options.persistent_group);
  if (!group.ok() && group.status().code() == StatusCode::kAlreadyExists) {
    group = session.CreateGroup(config, options.persistent_group);
  }
  if (!group.ok()) return group.status().WithContext("creating the group");

  StatusOr<v1::HandleInfo> handle =
      session.CreateHandle(options.group, options.handle_name, options.persistent_handle);
  if (!handle.ok() && handle.status().code() == StatusCode::kAlreadyExists &&
      options.persistent_handle) {
    handle = session.AttachHandle(options.handle_name);  // a previous frontend left it
  }
  if (!handle.ok()) return handle.status().WithContext("creating the handle");
  EPD_ASSIGN_OR_RETURN(const v1::NodeInfo node, client.GetNodeInfo());
  const bool device = node.backend() == "cuda";
  if (device) {
    const size_t exported = handle->buffers().total_bytes();
    EPD_ASSIGN_OR_RETURN(runner->host_view_,
                         HandleView::Open(*handle, std::make_unique<HostRegion>(exported)));
  }

  // One shared buffer: x [T, H] | topk [T, K] | weights [T, K] | out [T, H].
  const size_t T = problem.max_tokens, K = problem.top_k;
  const size_t idx_bytes = options.int64_topk ? 8 : 4;
  runner->x_offset_ = 0;
  runner->topk_offset_ = AlignUp(T * problem.row_bytes());
  runner->weights_offset_ = runner->topk_offset_ + AlignUp(T * K * idx_bytes);
  runner->out_offset_ = runner->weights_offset_ + AlignUp(T * K * sizeof(float));
  size_t total = runner->out_offset_ + AlignUp(T * problem.row_bytes());
  if (problem.fp8) {
    // fp8: ... | xq [T, H] e4m3 | x_scales [T, H / 128] | expert_out [recv_rows, H] bf16.
    const size_t recv_rows = static_cast<size_t>(handle->buffers().recv_rows());
    runner->xq_offset_ = total;
    runner->x_scales_offset_ = runner->xq_offset_ + AlignUp(T * problem.hidden);
    runner->expert_out_offset_ = runner->x_scales_offset_ + AlignUp(T * problem.scale_row_bytes());
    total = runner->expert_out_offset_ + AlignUp(recv_rows * problem.row_bytes());
    runner->expert_out_host_.resize(recv_rows * problem.row_bytes());
  }
  if (device) {
    // The rank's tensors live on the GPU that holds its handle.
    const int gpu = options.device >= 0                 ? options.device
                    : handle->source().device() >= 0 ? handle->source().device()
                                                     : rank;
    EPD_ASSIGN_OR_RETURN(runner->memory_, CreateDeviceMemory(total, gpu));
  } else {
    EPD_ASSIGN_OR_RETURN(runner->memory_, CreateHostMemory(total));
  }
  // NOTE: after the device memory: it made the handle's GPU current, and the receive region is
  // mapped on the current GPU (where frontend-launched kernels read it).
  EPD_ASSIGN_OR_RETURN(runner->view_, HandleView::Open(*handle));
  runner->out_host_.resize(T * problem.row_bytes());
  EPD_ASSIGN_OR_RETURN(runner->buffer_id_, session.RegisterBuffer(runner->memory_->Source()));
  EPD_ASSIGN_OR_RETURN(runner->done_, session.CreateFence());
  EPD_ASSIGN_OR_RETURN(runner->ready_, session.CreateFence());
  if (options.frontend_launched) {
    const LaunchTensors tensors{runner->x_offset_,      runner->topk_offset_,
                                runner->weights_offset_, runner->out_offset_,
                                options.int64_topk,      options.graphs};
    EPD_ASSIGN_OR_RETURN(runner->launch_,
                         CreateFrontendLaunch(session, *runner->view_, *runner->memory_, tensors,
                                              options.fence_timeout));
  }
  return runner;
}

v1::TensorRef RankRunner::x_ref(int n) const {
  if (problem_.fp8 && problem_.prequantized) {
    return MakeTensorRef(buffer_id_, xq_offset_, v1::DTYPE_FP8_E4M3, {n, problem_.hidden});
  }
  return MakeTensorRef(buffer_id_, x_offset_, problem_.dtype, {n, problem_.hidden});
}
v1::TensorRef RankRunner::x_scales_ref(int n) const {
  return MakeTensorRef(buffer_id_, x_scales_offset_,
                       problem_.scales() == ScaleFormat::kUe8m0 ? v1::DTYPE_UINT8 : v1::DTYPE_FP32,
                       {n, problem_.hidden / kFp8BlockChannels});
}
v1::TensorRef RankRunner::expert_out_ref() const {
  return MakeTensorRef(buffer_id_, expert_out_offset_, problem_.dtype,
                       {view_->recv_rows(), problem_.hidden});
}
v1::DispatchRequest RankRunner::DispatchRequestFor(int n, const v1::OpOptions& options) const {
  v1::DispatchRequest dispatch;
  dispatch.set_handle_id(handle_id());
  *dispatch.mutable_x() = x_ref(n);
  if (problem_.fp8 && problem_.prequantized) *dispatch.mutable_x_scales() = x_scales_ref(n);
  *dispatch.mutable_options() = options;
  return dispatch;
}
v1::TensorRef RankRunner::topk_ref(int n) const {
  return MakeTensorRef(buffer_id_, topk_offset_,
                       options_.int64_topk ? v1::DTYPE_INT64 : v1::DTYPE_INT32,
                       {n, problem_.top_k});
}
v1::TensorRef RankRunner::weights_ref(int n) const {
  return MakeTensorRef(buffer_id_, weights_offset_, v1::DTYPE_FP32, {n, problem_.top_k});
}
v1::TensorRef RankRunner::out_ref(int n) const {
  return MakeTensorRef(buffer_id_, out_offset_, problem_.dtype, {n, problem_.hidden});
}

Status RankRunner::Stage(const RankInputs& in) {
  EPD_RETURN_IF_ERROR(memory_->Write(x_offset_, in.x.data(), in.x.size()));
  if (options_.int64_topk) {
    const std::vector<int64_t> wide(in.topk_idx.begin(), in.topk_idx.end());
    EPD_RETURN_IF_ERROR(memory_->Write(topk_offset_, wide.data(), wide.size() * sizeof(int64_t)));
  } else {
    EPD_RETURN_IF_ERROR(
        memory_->Write(topk_offset_, in.topk_idx.data(), in.topk_idx.size() * sizeof(int32_t)));
  }
  EPD_RETURN_IF_ERROR(
      memory_->Write(weights_offset_, in.weights.data(), in.weights.size() * sizeof(float)));
  if (problem_.fp8 && problem_.prequantized) {
    std::vector<uint8_t> q, scales;
    QuantizeInputs(problem_, in, &q, &scales);
    EPD_RETURN_IF_ERROR(memory_->Write(xq_offset_, q.data(), q.size()));
    EPD_RETURN_IF_ERROR(memory_->Write(x_scales_offset_, scales.data(), scales.size()));
  }
  // Poison the output so a combine that writes nothing cannot pass.
  return memory_->Fill(out_offset_, 0x7f,
                       static_cast<size_t>(problem_.max_tokens) * problem_.row_bytes());
}

Status RankRunner::RunExpertsOnReceived(const ExpertFactor& factor) {
  if (!on_device()) {
    RunExperts(problem_, rank_, *view_, factor, expert_out_host_.data());
    if (!problem_.fp8) return OkStatus();
    return memory_->Write(expert_out_offset_, expert_out_host_.data(), expert_out_host_.size());
  }
  // Host round trip of the whole exported region (small in an example), then recv_x back.
  const v1::HandleBuffers& b = view_->info().buffers();
  const char* device_base = static_cast<const char*>(view_->recv_x()) - b.recv_x_offset();
  char* host_base = static_cast<char*>(host_view_->recv_x()) - b.recv_x_offset();
  EPD_RETURN_IF_ERROR(CopyToHost(host_base, device_base, b.total_bytes()));
  RunExperts(problem_, rank_, *host_view_, factor, expert_out_host_.data());
  if (problem_.fp8) {
    return memory_->Write(expert_out_offset_, expert_out_host_.data(), expert_out_host_.size());
  }
  return CopyToDevice(view_->recv_x(), host_view_->recv_x(),
                      static_cast<size_t>(view_->recv_rows()) * view_->row_bytes());
}

Status RankRunner::RunLayer(const RankInputs& in, const ExpertFactor& factor, bool fenced) {
  EPD_RETURN_IF_ERROR(Stage(in));
  EPD_RETURN_IF_ERROR(RunOps(in.num_tokens, factor, fenced));
  if (on_device()) {
    return memory_->Read(out_offset_, out_host_.data(),
                         static_cast<size_t>(in.num_tokens) * problem_.row_bytes());
  }
  return OkStatus();
}

Status RankRunner::RunOps(int n, const ExpertFactor& factor, bool fenced) {
  const uint64_t layer = ++layers_;
  if (launch_ != nullptr) {
    return launch_->RunLayer(n, [&] { return RunExpertsOnReceived(factor); });
  }
  if (!fenced) {
    const v1::OpOptions blocking = BlockingOptions();
    EPD_RETURN_IF_ERROR(
        session_->Update(handle_id(), topk_ref(n), weights_ref(n), blocking).WithContext("update"));
    std::future<Status> dispatched = session_->DispatchAsync(DispatchRequestFor(n, blocking));
    EPD_RETURN_IF_ERROR(session_->Await(dispatched, "dispatch").WithContext("dispatch"));
    EPD_RETURN_IF_ERROR(RunExpertsOnReceived(factor));
    std::optional<v1::TensorRef> expert_out;
    if (problem_.fp8) expert_out = expert_out_ref();
    return session_->Combine(handle_id(), out_ref(n), expert_out, blocking).WithContext("combine");
  }

  // Fenced: post update and dispatch back to back; the daemon signals `done` as each
  // completes. Combine is posted before the experts run and waits for `ready`.
  const uint64_t base = layer * 3;
  v1::UpdateHandleRequest update;
  update.set_handle_id(handle_id());
  *update.mutable_topk_idx() = topk_ref(n);
  *update.mutable_topk_weights() = weights_ref(n);
  *update.mutable_options() = FencedOptions(nullptr, 0, done_.get(), base + 1);
  std::future<Status> updated = session_->UpdateAsync(std::move(update));
  std::future<Status> dispatched = session_->DispatchAsync(
      DispatchRequestFor(n, FencedOptions(nullptr, 0, done_.get(), base + 2)));

  Status waited = FrontendWait(*done_, base + 2, options_.fence_timeout);
  // The answers tell why a fence never came (e.g. a rejected update).
  EPD_RETURN_IF_ERROR(session_->Await(updated, "update").WithContext("update"));
  EPD_RETURN_IF_ERROR(session_->Await(dispatched, "dispatch").WithContext("dispatch"));
  EPD_RETURN_IF_ERROR(waited.WithContext("waiting for dispatch"));

  v1::CombineRequest combine;
  combine.set_handle_id(handle_id());
  *combine.mutable_out() = out_ref(n);
  if (problem_.fp8) *combine.mutable_expert_out() = expert_out_ref();
  *combine.mutable_options() = FencedOptions(ready_.get(), layer, done_.get(), base + 3);
  std::future<Status> combined = session_->CombineAsync(std::move(combine));
  Status experts = RunExpertsOnReceived(factor);
  // Signal even when the experts failed: the posted combine must not wait out its timeout.
  EPD_RETURN_IF_ERROR(FrontendSignal(*ready_, layer));
  EPD_RETURN_IF_ERROR(experts);
  waited = FrontendWait(*done_, base + 3, options_.fence_timeout);
  EPD_RETURN_IF_ERROR(session_->Await(combined, "combine").WithContext("combine"));
  return waited.WithContext("waiting for combine");
}

Status RankRunner::RunAndCheck(const RankInputs& in, const ExpertFactor& factor, bool fenced) {
  EPD_RETURN_IF_ERROR(RunLayer(in, factor, fenced));
  const std::vector<uint8_t> expected = ExpectedOutput(problem_, in, factor);
  const int64_t bad = FirstMismatch(problem_, in.num_tokens, out(), expected.data());
  if (bad >= 0) {
    return InternalError("rank {}: combine output differs at {}", rank_,
                         DescribeElement(problem_, bad, out(), expected.data()));
  }
  return OkStatus();
}

}  // namespace epd::example
