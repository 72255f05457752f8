#include "daemon/backends/cuda/dispatch_payload.h"

namespace epd::cuda {
namespace {

// The core checks tensors before ops reach a backend; callers that drive the backend directly
// (GPU tests, the bench) get the same protection against a short or mistyped tensor.
Status CheckRows(const TensorView& t, DType dtype, int64_t columns, int n, const GroupConfig& c,
                 std::string_view field) {
  if (t.dtype != dtype || t.shape.size() != 2 || t.shape[0] < n || t.shape[1] != columns ||
      (n > 0 && t.data == nullptr)) {
    return InvalidArgumentError("dispatch of group '{}': {} must be {} [>= {}, {}]", c.name, field,
                                DTypeName(dtype), n, columns);
  }
  return OkStatus();
}

}  // namespace

Status SetDispatchPayload(const GroupConfig& c, const DispatchArgs& args, int n,
                          kernels::DispatchInputs* params) {
  params->x = args.x.data;
  params->hidden = c.hidden;
  params->row_bytes = static_cast<int64_t>(c.hidden) * DTypeSize(c.dtype);
  if (!c.fp8_dispatch()) {
    params->payload = kernels::kPayloadCopy;
    if (args.x_scales.data != nullptr) {
      return InvalidArgumentError(
          "dispatch of group '{}': x_scales is set, but the group dispatches {}", c.name,
          DTypeName(c.dtype));
    }
    return CheckRows(args.x, c.dtype, c.hidden, n, c, "x");
  }
  params->ue8m0_scales = c.scale_format == ScaleFormat::kUe8m0 ? 1 : 0;
  if (args.x.dtype == DType::kFp8E4m3) {
    params->payload = kernels::kPayloadPrequantized;
    params->x_scales = args.x_scales.data;
    EPD_RETURN_IF_ERROR(CheckRows(args.x, DType::kFp8E4m3, c.hidden, n, c, "x"));
    return CheckRows(args.x_scales, c.scale_dtype(), c.scale_blocks(), n, c, "x_scales");
  }
  params->payload = kernels::kPayloadQuantize;
  return CheckRows(args.x, c.dtype, c.hidden, n, c, "x");
}

void SetDispatchRouting(const CudaHandle& handle, kernels::DispatchInputs* inputs) {
  const GroupConfig& c = handle.group_->config_;
  const HandlePrivateLayout& p = handle.private_layout_;
  inputs->experts = c.experts;
  inputs->local_experts = c.local_experts();
  inputs->top_k = c.top_k;
  inputs->max_tokens = c.max_tokens_per_rank;
  inputs->topk_idx = handle.priv<int32_t>(p.topk_idx);
  inputs->topk_weights = handle.priv<float>(p.topk_weights);
  inputs->expert_counts = handle.priv<int32_t>(p.expert_counts);
  inputs->local_rank = handle.priv<int32_t>(p.local_rank);
  inputs->bound_tokens = handle.priv<int32_t>(p.bound_tokens);
  inputs->slot = handle.priv<int32_t>(p.slot);
}

}  // namespace epd::cuda
