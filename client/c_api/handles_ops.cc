// C API: handles, update / dispatch / combine, stream ops.
#include <algorithm>
#include <cstddef>
#include <cstring>

#include <optional>

#include "client/c_api/internal.h"
#include "client/epd/data_path.h"

using epd::c_api::NullArgument;
using epd::c_api::Report;

namespace {

epd::Status CheckDataPath(int32_t data_path) {
  switch (data_path) {
    case EPD_DATA_PATH_DEFAULT:
    case EPD_DATA_PATH_DAEMON_STREAMS:
    case EPD_DATA_PATH_FRONTEND_LAUNCHED:
      return epd::OkStatus();
    default:
      return epd::InvalidArgumentError("data_path {} is not one of 0 (default), 1 (daemon "
                                       "streams), 2 (frontend-launched)",
                                       data_path);
  }
}

// The data path of a handle of `group_config` asked for as `data_path` (epd_c.h's rules).
epd::StatusOr<epd::DataPath> ResolveDataPath(const epd_session& session, int32_t data_path,
                                             const epd::v1::GroupConfig& group_config) {
  std::optional<epd::DataPath> requested;
  if (data_path == EPD_DATA_PATH_DAEMON_STREAMS) requested = epd::DataPath::kDaemonStreams;
  if (data_path == EPD_DATA_PATH_FRONTEND_LAUNCHED) requested = epd::DataPath::kFrontendLaunched;
  if (data_path == EPD_DATA_PATH_DEFAULT) {
    EPD_ASSIGN_OR_RETURN(requested, epd::DataPathFromEnvironment());
  }
  if (group_config.spans_nodes()) {
    // Its ops exchange through NCCL on the daemon's streams: there is no frontend-launched path.
    if (requested == epd::DataPath::kFrontendLaunched) {
      return epd::FailedPreconditionError(
          "group '{}' spans nodes: it has no frontend-launched path; use the daemon's streams "
          "(EPD_DATA_PATH_DAEMON_STREAMS)",
          group_config.name());
    }
    return epd::DataPath::kDaemonStreams;
  }
  const bool fp8 = group_config.dispatch_dtype() == epd::v1::DTYPE_FP8_E4M3;
  if (fp8 && requested == epd::DataPath::kFrontendLaunched) {
    return epd::FailedPreconditionError(
        "group '{}' dispatches FP8: the frontend-launched data path moves the token dtype "
        "only; use the daemon's streams (EPD_DATA_PATH_DAEMON_STREAMS)",
        group_config.name());
  }
  if (fp8) return epd::DataPath::kDaemonStreams;
  return epd::ChooseDataPath(session.node, session.session->rank(),
                             epd::c_api::ClientHasCuda(), requested);
}

epd_status_t OpenHandle(epd_session* session, int32_t data_path,
                        epd::StatusOr<epd::v1::HandleInfo> info, epd_handle_t** handle) {
  if (!info.ok()) return Report(info.status());
  auto path = ResolveDataPath(*session, data_path, info->config());
  if (!path.ok()) {
    return Report(path.status().WithContext(fmt::format("handle '{}'", info->name())));
  }
  auto view = epd::HandleView::Open(*info);
  if (!view.ok()) return Report(view.status());
  auto h = std::make_unique<epd_handle>();
  h->session = session;
  h->view = std::move(*view);
  if (*path == epd::DataPath::kFrontendLaunched) {
    auto frontend =
        epd::c_api::OpenFrontendPath(*session->session, *h->view, session->options.op_timeout);
    if (!frontend.ok()) {
      return Report(frontend.status().WithContext(fmt::format("handle '{}'", info->name())));
    }
    h->frontend = std::move(*frontend);
    h->data_path = EPD_DATA_PATH_FRONTEND_LAUNCHED;
  }
  *handle = h.release();
  return EPD_OK;
}

// FAILED_PRECONDITION unless `handle` is on the frontend-launched path.
// The daemon runs no ops of a handle on the frontend-launched path.
epd::Status FrontendHandleRefused(const char* function, const epd_handle& handle) {
  return epd::FailedPreconditionError(
      "{}: handle {} uses the frontend-launched data path: launch its ops on a CUDA stream "
      "with epd_handle_update / epd_handle_dispatch / epd_handle_combine",
      function, handle.view->handle_id());
}

epd::Status RequireFrontend(const char* function, const epd_handle& handle) {
  if (handle.frontend != nullptr) return epd::OkStatus();
  return epd::FailedPreconditionError(
      "{}: handle {} uses the daemon's streams; frontend-launched ops need a handle opened "
      "with EPD_DATA_PATH_FRONTEND_LAUNCHED (use epd_update / epd_dispatch / epd_combine)",
      function, handle.view->handle_id());
}

epd::StatusOr<epd::v1::TensorRef> ToRef(const epd_tensor_ref_t& ref, const char* field) {
  if (ref.ndim < 1 || ref.ndim > EPD_MAX_DIMS) {
    return epd::InvalidArgumentError("{}.ndim is {}, expected 1..{}", field, ref.ndim,
                                     EPD_MAX_DIMS);
  }
  std::vector<int64_t> shape(ref.shape, ref.shape + ref.ndim);
  return epd::MakeTensorRef(ref.buffer_id, ref.offset_bytes,
                            static_cast<epd::v1::DType>(ref.dtype), shape);
}

epd::StatusOr<epd::v1::OpOptions> ToOptions(const epd_op_options_t* options) {
  if (options == nullptr) return epd::BlockingOptions();
  if (options->struct_size < sizeof(epd_op_options_t)) {
    return epd::InvalidArgumentError(
        "options.struct_size {} is smaller than {} (call epd_op_options_init)",
        options->struct_size, sizeof(epd_op_options_t));
  }
  epd::v1::OpOptions cpp;
  if (options->wait_fence_id != 0) {
    cpp.mutable_wait()->set_fence_id(options->wait_fence_id);
    cpp.mutable_wait()->set_value(options->wait_value);
  }
  if (options->signal_fence_id != 0) {
    cpp.mutable_signal()->set_fence_id(options->signal_fence_id);
    cpp.mutable_signal()->set_value(options->signal_value);
  }
  cpp.set_blocking(options->blocking != 0);
  return cpp;
}

// Builds the op of `kind` on `handle` (a, b as in epd_stream_op_create).
epd::StatusOr<epd::v1::SessionRequest> BuildOp(const epd_handle& handle, int32_t kind,
                                               const epd_tensor_ref_t* a,
                                               const epd_tensor_ref_t* b,
                                               const epd::v1::OpOptions& options) {
  epd::v1::SessionRequest request;
  const uint64_t session_id = handle.session->session->id();
  const uint64_t handle_id = handle.view->handle_id();
  switch (kind) {
    case EPD_OP_UPDATE: {
      auto* update = request.mutable_update();
      update->set_session_id(session_id);
      update->set_handle_id(handle_id);
      EPD_ASSIGN_OR_RETURN(*update->mutable_topk_idx(), ToRef(*a, "topk_idx"));
      if (b != nullptr) {
        EPD_ASSIGN_OR_RETURN(*update->mutable_topk_weights(), ToRef(*b, "weights"));
      }
      *update->mutable_options() = options;
      break;
    }
    case EPD_OP_DISPATCH: {
      auto* dispatch = request.mutable_dispatch();
      dispatch->set_session_id(session_id);
      dispatch->set_handle_id(handle_id);
      EPD_ASSIGN_OR_RETURN(*dispatch->mutable_x(), ToRef(*a, "x"));
      if (b != nullptr) {
        EPD_ASSIGN_OR_RETURN(*dispatch->mutable_x_scales(), ToRef(*b, "x_scales"));
      }
      *dispatch->mutable_options() = options;
      break;
    }
    case EPD_OP_COMBINE: {
      auto* combine = request.mutable_combine();
      combine->set_session_id(session_id);
      combine->set_handle_id(handle_id);
      EPD_ASSIGN_OR_RETURN(*combine->mutable_out(), ToRef(*a, "out"));
      if (b != nullptr) {
        EPD_ASSIGN_OR_RETURN(*combine->mutable_expert_out(), ToRef(*b, "expert_out"));
      }
      *combine->mutable_options() = options;
      break;
    }
    default:
      return epd::InvalidArgumentError("op kind {} is not 1 (update), 2 (dispatch), 3 (combine)",
                                       kind);
  }
  return request;
}

const char* OpName(int32_t kind) {
  return kind == EPD_OP_UPDATE ? "update" : kind == EPD_OP_DISPATCH ? "dispatch" : "combine";
}

epd_status_t RunOp(const char* function, epd_session* session, const epd_handle* handle,
                   int32_t kind, const epd_tensor_ref_t* a, const epd_tensor_ref_t* b,
                   const epd_op_options_t* options) {
  if (session == nullptr) return NullArgument(function, "session");
  if (handle == nullptr) return NullArgument(function, "handle");
  if (a == nullptr) return NullArgument(function, kind == EPD_OP_COMBINE ? "out" : "tensor");
  if (handle->session != session) {
    return Report(epd::InvalidArgumentError("{}: handle {} belongs to another session", function,
                                            handle->view->handle_id()));
  }
  if (handle->frontend != nullptr) return Report(FrontendHandleRefused(function, *handle));
  auto cpp_options = ToOptions(options);
  if (!cpp_options.ok()) return Report(cpp_options.status());
  auto request = BuildOp(*handle, kind, a, b, *cpp_options);
  if (!request.ok()) return Report(request.status());
  if (session->session->closed()) return Report(epd::FailedPreconditionError(
      "{}: session {} (rank {}) is closed", function, session->session->id(),
      session->session->rank()));
  if (cpp_options->blocking()) {
    // After the fenced ops queued before it, so the daemon sees them in call order.
    if (epd::Status flushed = session->poster->Flush(session->options.op_timeout); !flushed.ok()) {
      return Report(flushed);
    }
    auto answer = epd::c_api::PostOp(*session->session, std::move(*request));
    return Report(session->session->Await(answer, OpName(kind)));
  }
  // An earlier fenced op failed: report it now rather than post more work after it.
  if (epd::Status earlier = session->reaper->TakeError(); !earlier.ok()) return Report(earlier);
  session->poster->Enqueue(std::move(*request), OpName(kind), cpp_options->signal().fence_id(),
                           cpp_options->signal().value());
  return EPD_OK;
}

// Every field of the current epd_handle_info_t.
epd_handle_info_t FillHandleInfo(const epd_handle_t& handle) {
  const epd::HandleView& view = *handle.view;
  const epd::v1::HandleInfo& h = view.info();
  const epd::v1::GroupConfig& c = h.config();
  const epd::v1::HandleBuffers& b = h.buffers();
  epd_handle_info_t info{};
  info.struct_size = sizeof(info);
  info.handle_id = h.handle_id();
  info.buffer_id = h.buffer_id();
  info.name = h.name().c_str();
  info.group = h.group().c_str();
  info.group_rank = h.group_rank();
  info.persistent = h.persistent() ? 1 : 0;
  info.data_path = handle.data_path;
  const int32_t world = c.ranks_size() > 0 ? c.ranks_size() : c.world_size();
  info.world_size = world;
  info.experts = c.experts();
  info.local_experts = world > 0 ? c.experts() / world : 0;
  info.hidden = c.hidden();
  info.max_tokens_per_rank = c.max_tokens_per_rank();
  info.top_k = c.top_k();
  info.dtype = c.dtype();
  info.algorithm = c.algorithm();
  info.layout = c.layout();
  info.expert_capacity = c.expert_capacity();
  info.region = view.recv_x() != nullptr
                     ? static_cast<char*>(view.recv_x()) - b.recv_x_offset()
                     : nullptr;
  info.region_bytes = b.total_bytes();
  info.on_device = view.on_device() ? 1 : 0;
  info.device = h.source().device();
  info.recv_rows = b.recv_rows();
  const bool expert_major = view.expert_major();
  auto when = [](bool present, uint64_t offset) { return present ? offset : EPD_NO_TENSOR; };
  info.recv_x_offset = b.recv_x_offset();
  const bool high_throughput = view.high_throughput();
  info.recv_src_offset = when(expert_major || high_throughput, b.recv_src_offset());
  info.recv_weights_offset = when(expert_major, b.recv_weights_offset());
  info.recv_topk_idx_offset = when(!expert_major, b.recv_topk_idx_offset());
  info.recv_topk_weights_offset = when(!expert_major, b.recv_topk_weights_offset());
  info.recv_counts_offset = b.recv_counts_offset();
  info.recv_offsets_offset = when(expert_major || high_throughput, b.recv_offsets_offset());
  info.recv_rank_counts_offset = when(high_throughput, b.recv_rank_counts_offset());
  info.recv_rank_offsets_offset = when(high_throughput, b.recv_rank_offsets_offset());
  info.expert_rows_offset = when(high_throughput, b.expert_rows_offset());
  info.expert_rows_entries = high_throughput ? b.expert_rows_entries() : 0;
  const bool fp8 = c.dispatch_dtype() == epd::v1::DTYPE_FP8_E4M3;
  info.dispatch_dtype = fp8 ? int32_t{EPD_DTYPE_FP8_E4M3} : static_cast<int32_t>(c.dtype());
  info.scale_format =
      fp8 ? static_cast<int32_t>(c.scale_format()) : int32_t{EPD_SCALE_FORMAT_DEFAULT};
  info.recv_scales_offset = when(fp8, b.recv_scales_offset());
  info.held_bytes = h.held_bytes();
  return info;
}

}  // namespace

namespace epd::c_api {

void PostStreamOp(epd_stream_op* op) {
  op->posts.fetch_add(1, std::memory_order_relaxed);
  op->session->poster->Enqueue(op->request, op->what, op->fence_out->fence->id(), 1);
}

}  // namespace epd::c_api

extern "C" {

epd_status_t epd_handle_create(epd_session_t* session, const char* group, const char* name,
                               int32_t persistent, int32_t data_path, epd_handle_t** handle) {
  if (session == nullptr) return NullArgument("epd_handle_create", "session");
  if (group == nullptr) return NullArgument("epd_handle_create", "group");
  if (handle == nullptr) return NullArgument("epd_handle_create", "handle");
  *handle = nullptr;
  if (epd::Status path = CheckDataPath(data_path); !path.ok()) return Report(path);
  return OpenHandle(session, data_path,
                    session->session->CreateHandle(group, name != nullptr ? name : "",
                                                   persistent != 0),
                    handle);
}

epd_status_t epd_handle_attach(epd_session_t* session, const char* name, int32_t data_path,
                               epd_handle_t** handle) {
  if (session == nullptr) return NullArgument("epd_handle_attach", "session");
  if (name == nullptr) return NullArgument("epd_handle_attach", "name");
  if (handle == nullptr) return NullArgument("epd_handle_attach", "handle");
  *handle = nullptr;
  if (epd::Status path = CheckDataPath(data_path); !path.ok()) return Report(path);
  return OpenHandle(session, data_path, session->session->AttachHandle(name), handle);
}

epd_status_t epd_handle_info(const epd_handle_t* handle, epd_handle_info_t* info) {
  if (handle == nullptr) return NullArgument("epd_handle_info", "handle");
  if (info == nullptr) return NullArgument("epd_handle_info", "info");
  // The caller's struct may predate fields appended since version 1: fill only its size.
  constexpr uint32_t kVersion1Size = offsetof(epd_handle_info_t, dispatch_dtype);
  const uint32_t caller_size = info->struct_size == 0 ? kVersion1Size : info->struct_size;
  if (caller_size < kVersion1Size) {
    return Report(epd::InvalidArgumentError(
        "epd_handle_info: info.struct_size {} is smaller than the first version's {}",
        caller_size, kVersion1Size));
  }
  const epd_handle_info_t filled = FillHandleInfo(*handle);
  const uint32_t size = std::min<uint32_t>(caller_size, sizeof(filled));
  std::memcpy(info, &filled, size);
  info->struct_size = size;
  return EPD_OK;
}

void epd_handle_close(epd_handle_t* handle) { delete handle; }

epd_status_t epd_handle_destroy(epd_handle_t* handle) {
  if (handle == nullptr) return EPD_OK;
  epd::Session& session = *handle->session->session;
  const uint64_t id = handle->view->handle_id();
  delete handle;  // unmap first: the daemon frees the region
  return Report(session.closed() ? epd::OkStatus() : session.DestroyHandle(id));
}

void epd_op_options_init(epd_op_options_t* options) {
  if (options == nullptr) return;
  *options = epd_op_options_t{};
  options->struct_size = sizeof(*options);
  options->blocking = 1;
}

epd_status_t epd_update(epd_session_t* session, const epd_handle_t* handle,
                        const epd_tensor_ref_t* topk_idx, const epd_tensor_ref_t* weights,
                        const epd_op_options_t* options) {
  return RunOp("epd_update", session, handle, EPD_OP_UPDATE, topk_idx, weights, options);
}

epd_status_t epd_dispatch(epd_session_t* session, const epd_handle_t* handle,
                          const epd_tensor_ref_t* x, const epd_op_options_t* options) {
  return RunOp("epd_dispatch", session, handle, EPD_OP_DISPATCH, x, nullptr, options);
}

epd_status_t epd_dispatch_prequantized(epd_session_t* session, const epd_handle_t* handle,
                                       const epd_tensor_ref_t* x,
                                       const epd_tensor_ref_t* x_scales,
                                       const epd_op_options_t* options) {
  const char* function = "epd_dispatch_prequantized";
  if (x_scales == nullptr) return NullArgument(function, "x_scales");
  return RunOp(function, session, handle, EPD_OP_DISPATCH, x, x_scales, options);
}

epd_status_t epd_combine(epd_session_t* session, const epd_handle_t* handle,
                         const epd_tensor_ref_t* out, const epd_tensor_ref_t* expert_out,
                         const epd_op_options_t* options) {
  return RunOp("epd_combine", session, handle, EPD_OP_COMBINE, out, expert_out, options);
}

epd_status_t epd_stream_op_create(epd_session_t* session, const epd_handle_t* handle,
                                  int32_t kind, const epd_tensor_ref_t* a,
                                  const epd_tensor_ref_t* b, epd_fence_t* fence_in,
                                  epd_fence_t* fence_out, epd_stream_op_t** op) {
  const char* function = "epd_stream_op_create";
  if (session == nullptr) return NullArgument(function, "session");
  if (handle == nullptr) return NullArgument(function, "handle");
  if (a == nullptr) return NullArgument(function, "a");
  if (fence_in == nullptr) return NullArgument(function, "fence_in");
  if (fence_out == nullptr) return NullArgument(function, "fence_out");
  if (op == nullptr) return NullArgument(function, "op");
  *op = nullptr;
  if (fence_in == fence_out) {
    return Report(epd::InvalidArgumentError("{}: fence_in and fence_out are both fence {}",
                                            function, fence_in->fence->id()));
  }
  if (!fence_in->fence->on_device() || !fence_out->fence->on_device()) {
    return Report(epd::FailedPreconditionError(
        "{}: stream ops need device fences; fences {} and {} are in host memory (cpu backend?)",
        function, fence_in->fence->id(), fence_out->fence->id()));
  }
  epd::v1::OpOptions options;
  options.mutable_wait()->set_fence_id(fence_in->fence->id());
  options.mutable_wait()->set_value(1);
  options.mutable_signal()->set_fence_id(fence_out->fence->id());
  options.mutable_signal()->set_value(1);
  if (handle->frontend != nullptr) return Report(FrontendHandleRefused(function, *handle));
  auto request = BuildOp(*handle, kind, a, b, options);
  if (!request.ok()) return Report(request.status());
  auto* created = new epd_stream_op;
  created->session = session;
  created->request = std::move(*request);
  created->what = OpName(kind);
  created->fence_in = fence_in;
  created->fence_out = fence_out;
  *op = created;
  return EPD_OK;
}

epd_status_t epd_stream_op_enqueue(epd_stream_op_t* op, void* cuda_stream) {
  if (op == nullptr) return NullArgument("epd_stream_op_enqueue", "op");
  if (epd::Status earlier = op->session->reaper->TakeError(); !earlier.ok()) {
    return Report(earlier);
  }
  return Report(epd::c_api::EnqueueStreamOp(op, cuda_stream));
}

uint64_t epd_stream_op_posts(const epd_stream_op_t* op) {
  return op != nullptr ? op->posts.load(std::memory_order_relaxed) : 0;
}

void epd_stream_op_destroy(epd_stream_op_t* op) { delete op; }

epd_status_t epd_handle_update(epd_handle_t* handle, const void* topk_idx, int32_t idx_dtype,
                               const float* weights, int32_t num_tokens, void* cuda_stream) {
  const char* function = "epd_handle_update";
  if (handle == nullptr) return NullArgument(function, "handle");
  if (epd::Status frontend = RequireFrontend(function, *handle); !frontend.ok()) {
    return Report(frontend);
  }
  if (idx_dtype != EPD_DTYPE_INT32 && idx_dtype != EPD_DTYPE_INT64) {
    return Report(epd::InvalidArgumentError(
        "{}: idx_dtype {} is not {} (int32) or {} (int64)", function, idx_dtype,
        int{EPD_DTYPE_INT32}, int{EPD_DTYPE_INT64}));
  }
  return Report(epd::c_api::FrontendUpdate(*handle->frontend, topk_idx,
                                           idx_dtype == EPD_DTYPE_INT64, weights, num_tokens,
                                           cuda_stream));
}

epd_status_t epd_handle_dispatch(epd_handle_t* handle, const void* x, void* cuda_stream) {
  const char* function = "epd_handle_dispatch";
  if (handle == nullptr) return NullArgument(function, "handle");
  if (epd::Status frontend = RequireFrontend(function, *handle); !frontend.ok()) {
    return Report(frontend);
  }
  return Report(epd::c_api::FrontendDispatch(*handle->frontend, x, cuda_stream));
}

epd_status_t epd_handle_combine(epd_handle_t* handle, void* out, const void* expert_out,
                                void* cuda_stream) {
  const char* function = "epd_handle_combine";
  if (handle == nullptr) return NullArgument(function, "handle");
  if (epd::Status frontend = RequireFrontend(function, *handle); !frontend.ok()) {
    return Report(frontend);
  }
  if (expert_out != nullptr && expert_out != handle->view->recv_x()) {
    // Peers read every rank's expert output through their own mappings of its receive
    // region: memory outside it is not visible to them.
    return Report(epd::InvalidArgumentError(
        "{}: expert_out {} is not handle {}'s recv_x ({}): on the frontend-launched path the "
        "experts write their outputs into recv_x in place",
        function, expert_out, handle->view->handle_id(), handle->view->recv_x()));
  }
  return Report(epd::c_api::FrontendCombine(*handle->frontend, out, cuda_stream));
}

epd_status_t epd_handle_take_errors(epd_handle_t* handle) {
  if (handle == nullptr) return NullArgument("epd_handle_take_errors", "handle");
  if (handle->frontend == nullptr) return EPD_OK;
  return Report(epd::c_api::FrontendTakeErrors(*handle->frontend));
}

}  // extern "C"
