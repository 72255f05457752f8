#include "daemon/core/op_validation.h"

#include <fmt/ranges.h>

#include <limits>

namespace epd {

StatusOr<uint64_t> TensorBytes(const TensorRef& ref, std::string_view field) {
  if (ref.buffer_id == 0) {
    return InvalidArgumentError("{}.buffer_id = 0: the tensor names no buffer", field);
  }
  if (ref.shape.empty()) {
    return InvalidArgumentError("{}.shape is empty: a tensor needs at least one dimension", field);
  }
  uint64_t elements = 1;
  for (size_t i = 0; i < ref.shape.size(); ++i) {
    const int64_t extent = ref.shape[i];
    if (extent < 0) {
      return InvalidArgumentError("{}.shape[{}] = {} is negative", field, i, extent);
    }
    // 16: no dtype is larger, so bytes below cannot overflow either.
    if (extent != 0 && elements > std::numeric_limits<uint64_t>::max() / 16 / extent) {
      return InvalidArgumentError("{}.shape = [{}] is too large", field,
                                  fmt::join(ref.shape, ", "));
    }
    elements *= static_cast<uint64_t>(extent);
  }
  return elements * DTypeSize(ref.dtype);
}

Status CheckTensorPlacement(const TensorRef& ref, std::string_view field, uint64_t bytes,
                            uint64_t buffer_bytes) {
  if (ref.offset_bytes % kTensorAlignment != 0) {
    return InvalidArgumentError("{}.offset_bytes = {} is not a multiple of {}", field,
                                ref.offset_bytes, kTensorAlignment);
  }
  if (ref.offset_bytes > buffer_bytes || bytes > buffer_bytes - ref.offset_bytes) {
    return InvalidArgumentError(
        "{} (buffer {}, offset_bytes = {}, {} bytes) lies outside the buffer's {} bytes", field,
        ref.buffer_id, ref.offset_bytes, bytes, buffer_bytes);
  }
  return OkStatus();
}

Status ExpectDType(const TensorView& view, std::string_view field, DType expected) {
  if (view.dtype != expected) {
    return InvalidArgumentError("{}.dtype = {} does not match the expected {}", field,
                                DTypeName(view.dtype), DTypeName(expected));
  }
  return OkStatus();
}

Status ExpectShape(const TensorView& view, std::string_view field,
                   std::initializer_list<int64_t> shape,
                   std::initializer_list<std::string_view> dim_names) {
  if (view.shape.size() != shape.size()) {
    return InvalidArgumentError("{}.shape = [{}] must have {} dimensions", field,
                                fmt::join(view.shape, ", "), shape.size());
  }
  size_t i = 0;
  auto name = dim_names.begin();
  for (int64_t expected : shape) {
    if (expected >= 0 && view.shape[i] != expected) {
      return InvalidArgumentError("{}.shape[{}] = {} does not match {} = {}", field, i,
                                  view.shape[i], *name, expected);
    }
    ++i;
    ++name;
  }
  return OkStatus();
}

StatusOr<int> ValidateUpdate(const GroupConfig& config, const TensorView& topk_idx,
                             const TensorView* topk_weights) {
  if (topk_idx.dtype != DType::kInt32 && topk_idx.dtype != DType::kInt64) {
    return InvalidArgumentError("topk_idx.dtype = {} must be int32 or int64",
                                DTypeName(topk_idx.dtype));
  }
  EPD_RETURN_IF_ERROR(ExpectShape(topk_idx, "topk_idx", {-1, config.top_k}, {"n", "top_k"}));
  const int64_t n = topk_idx.rows();
  if (n > config.max_tokens_per_rank) {
    return InvalidArgumentError("topk_idx.shape[0] = {} exceeds max_tokens_per_rank = {}", n,
                                config.max_tokens_per_rank);
  }
  if (topk_weights != nullptr) {
    EPD_RETURN_IF_ERROR(ExpectDType(*topk_weights, "topk_weights", DType::kFp32));
    EPD_RETURN_IF_ERROR(
        ExpectShape(*topk_weights, "topk_weights", {n, config.top_k}, {"n", "top_k"}));
  }
  return static_cast<int>(n);
}

Status ValidateTokenRows(const GroupConfig& config, const TensorView& view,
                         std::string_view field, int bound_tokens) {
  EPD_RETURN_IF_ERROR(ExpectDType(view, field, config.dtype));
  return ExpectShape(view, field, {bound_tokens, config.hidden},
                     {"tokens bound by the last UpdateHandle", "hidden"});
}

Status ValidateDispatchInputKind(const GroupConfig& config, DType x_dtype, bool has_x_scales) {
  const bool prequantized = config.fp8_dispatch() && x_dtype == DType::kFp8E4m3;
  if (prequantized && !has_x_scales) {
    return InvalidArgumentError(
        "x_scales is required: x is pre-quantized fp8_e4m3 (group '{}' scales are {})",
        config.name, ScaleFormatName(config.scale_format));
  }
  if (!prequantized && has_x_scales) {
    return InvalidArgumentError(
        "x_scales is set, but x.dtype = {} is not pre-quantized fp8_e4m3{}", DTypeName(x_dtype),
        config.fp8_dispatch()
            ? ""
            : fmt::format(" (group '{}' dispatches {})", config.name, DTypeName(config.dtype)));
  }
  return OkStatus();
}

Status ValidatePrequantizedX(const GroupConfig& config, const TensorView& view,
                             int bound_tokens) {
  EPD_RETURN_IF_ERROR(ExpectDType(view, "x", DType::kFp8E4m3));
  return ExpectShape(view, "x", {bound_tokens, config.hidden},
                     {"tokens bound by the last UpdateHandle", "hidden"});
}

Status ValidateXScales(const GroupConfig& config, const TensorView& view, int bound_tokens) {
  EPD_RETURN_IF_ERROR(ExpectDType(view, "x_scales", config.scale_dtype()));
  return ExpectShape(view, "x_scales", {bound_tokens, config.scale_blocks()},
                     {"tokens bound by the last UpdateHandle", "hidden / 128"});
}

Status ValidateInPlaceCombine(const GroupConfig& config) {
  if (!config.fp8_dispatch()) return OkStatus();
  return InvalidArgumentError(
      "expert_out is required: group '{}' dispatches fp8_e4m3, so recv_x cannot hold the {} "
      "expert outputs in place",
      config.name, DTypeName(config.dtype));
}

Status ValidateExpertOut(const GroupConfig& config, const HandleLayout& layout,
                         const TensorView& view) {
  EPD_RETURN_IF_ERROR(ExpectDType(view, "expert_out", config.dtype));
  return ExpectShape(view, "expert_out", {static_cast<int64_t>(layout.recv_rows), config.hidden},
                     {"recv_rows", "hidden"});
}

Status CheckRequestRank(int requested, int session_rank) {
  if (requested >= 0 && requested != session_rank) {
    return PermissionDeniedError("rank = {} does not match the session's rank {}", requested,
                                 session_rank);
  }
  return OkStatus();
}

Status ValidateSessionRank(int rank, int node_ranks) {
  if (rank < 0 || rank >= node_ranks) {
    return InvalidArgumentError("rank = {} is outside the node's ranks [0, {})", rank,
                                node_ranks);
  }
  return OkStatus();
}

Status ValidateMemorySource(const MemorySource& source, std::string_view field) {
  if (source.kind == MemorySource::Kind::kHostShm && source.shm_name.empty()) {
    return InvalidArgumentError("{}.shm_name is empty", field);
  }
  // cudaIpcMemHandle_t is 64 opaque bytes (CUDA_IPC_HANDLE_SIZE).
  if (source.kind == MemorySource::Kind::kCudaIpc && source.ipc_handle.size() != 64) {
    return InvalidArgumentError("{}.cuda_ipc_handle has {} bytes; a cudaIpcMemHandle_t has 64",
                                field, source.ipc_handle.size());
  }
  if (source.size == 0) return InvalidArgumentError("{}.size = 0: nothing to register", field);
  return OkStatus();
}

Status ValidateHandleRequest(std::string_view group, std::string_view name, bool persistent) {
  if (group.empty()) return InvalidArgumentError("group is empty: name the handle's group");
  if (persistent && name.empty()) {
    return InvalidArgumentError("name is empty: a persistent handle needs a name");
  }
  return OkStatus();
}

Status ValidateAttachName(std::string_view name) {
  if (name.empty()) return InvalidArgumentError("name is empty: name the persistent handle");
  return OkStatus();
}

}  // namespace epd
