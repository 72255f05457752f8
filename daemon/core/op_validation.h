// Op validation: the engine's one layer of semantic request checks, as pure functions of the
// request and the group's constants (no session, no backend), called once on the enqueue
// path. Every message names the field and its value. The service only translates the wire
// format; the backends trust what passes here.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string_view>

#include "daemon/core/backend.h"
#include "daemon/core/engine.h"
#include "daemon/core/group_config.h"
#include "common/limits.h"
#include "common/status.h"

namespace epd {

// Token and index tensors must start on a 16-byte boundary: the device copies rows in 16-byte
// vectors and a misaligned tensor would fault instead of failing cleanly.
constexpr uint64_t kTensorAlignment = kVectorBytes;

// --- tensors, before their buffer is looked up ---
// The tensor's size in bytes: it names a buffer, has at least one dimension, no negative
// extent, and a size that fits in 64 bits.
StatusOr<uint64_t> TensorBytes(const TensorRef& ref, std::string_view field);
// `bytes` at ref.offset_bytes are aligned and lie inside a buffer of `buffer_bytes`.
Status CheckTensorPlacement(const TensorRef& ref, std::string_view field, uint64_t bytes,
                            uint64_t buffer_bytes);

// --- resolved tensors against what an op expects; -1 in `shape` accepts any extent ---
Status ExpectDType(const TensorView& view, std::string_view field, DType expected);
Status ExpectShape(const TensorView& view, std::string_view field,
                   std::initializer_list<int64_t> shape,
                   std::initializer_list<std::string_view> dim_names);

// --- ops ---
// topk_idx [n, K] int32/int64 with n <= T; topk_weights (may be null) [n, K] f32. Returns n.
StatusOr<int> ValidateUpdate(const GroupConfig& config, const TensorView& topk_idx,
                             const TensorView* topk_weights);
// x of a dispatch / out of a combine: [tokens bound by the last update, H] of the group dtype.
Status ValidateTokenRows(const GroupConfig& config, const TensorView& view,
                         std::string_view field, int bound_tokens);
// Dispatch's x is bf16 token rows (validated by ValidateTokenRows) or, with fp8 dispatch,
// e4m3 rows pre-quantized by the frontend, which then also passes x_scales. Checks that
// x.dtype and the presence of x_scales agree with each other and with the group.
Status ValidateDispatchInputKind(const GroupConfig& config, DType x_dtype, bool has_x_scales);
// Pre-quantized fp8 x: [tokens bound by the last update, H] e4m3.
Status ValidatePrequantizedX(const GroupConfig& config, const TensorView& view, int bound_tokens);
// Its x_scales: [tokens bound by the last update, H / 128] fp32 or uint8 (the scale format).
Status ValidateXScales(const GroupConfig& config, const TensorView& view, int bound_tokens);
// A combine without expert_out reads the handle's recv_x in place: not with fp8 dispatch,
// whose recv_x holds e4m3 rows rather than the token dtype.
Status ValidateInPlaceCombine(const GroupConfig& config);
// A combine's expert_out: [recv_rows, H] of the group dtype.
Status ValidateExpertOut(const GroupConfig& config, const HandleLayout& layout,
                         const TensorView& view);
// An op's optional `rank` must be unset (-1) or the session's rank.
Status CheckRequestRank(int requested, int session_rank);

// --- control requests ---
Status ValidateSessionRank(int rank, int node_ranks);
Status ValidateMemorySource(const MemorySource& source, std::string_view field);
Status ValidateHandleRequest(std::string_view group, std::string_view name, bool persistent);
Status ValidateAttachName(std::string_view name);

}  // namespace epd
