// The engine's validation layer as pure functions: no session, no backend.
#include "daemon/core/op_validation.h"

#include <gtest/gtest.h>

namespace epd {
namespace {

GroupConfig Config() {
  GroupConfig c;
  c.name = "g";
  c.ranks = {0, 1};
  c.experts = 4;
  c.hidden = 16;
  c.max_tokens_per_rank = 8;
  c.top_k = 2;
  c.dtype = DType::kBf16;
  return c;
}

TensorView View(DType dtype, std::vector<int64_t> shape) {
  static char storage[16];
  return TensorView{storage, dtype, std::move(shape)};
}

void ExpectMessage(const Status& status, StatusCode code, const std::string& message) {
  EXPECT_EQ(status.code(), code) << status.ToString();
  EXPECT_EQ(status.message(), message);
}

TEST(OpValidationTest, TensorRefsNeedABufferAndAShapeThatFits) {
  TensorRef ref{0, 0, DType::kFp32, {2, 4}};
  ExpectMessage(TensorBytes(ref, "x").status(), StatusCode::kInvalidArgument,
                "x.buffer_id = 0: the tensor names no buffer");
  ref.buffer_id = 3;
  EXPECT_EQ(TensorBytes(ref, "x").value(), 2u * 4u * 4u);
  ref.shape = {};
  ExpectMessage(TensorBytes(ref, "x").status(), StatusCode::kInvalidArgument,
                "x.shape is empty: a tensor needs at least one dimension");
  ref.shape = {4, -1};
  ExpectMessage(TensorBytes(ref, "x").status(), StatusCode::kInvalidArgument,
                "x.shape[1] = -1 is negative");
  ref.shape = {1LL << 40, 1LL << 40};
  EXPECT_NE(TensorBytes(ref, "x").status().message().find("is too large"), std::string::npos);
  ref.shape = {0, 64};
  EXPECT_EQ(TensorBytes(ref, "x").value(), 0u);
}

TEST(OpValidationTest, PlacementIsAlignedAndInsideTheBuffer) {
  TensorRef ref{3, 16, DType::kFp32, {4}};
  EXPECT_TRUE(CheckTensorPlacement(ref, "out", 16, 32).ok());
  ExpectMessage(CheckTensorPlacement(ref, "out", 32, 32), StatusCode::kInvalidArgument,
                "out (buffer 3, offset_bytes = 16, 32 bytes) lies outside the buffer's 32 bytes");
  ref.offset_bytes = 8;
  ExpectMessage(CheckTensorPlacement(ref, "out", 4, 64), StatusCode::kInvalidArgument,
                "out.offset_bytes = 8 is not a multiple of 16");
  ref.offset_bytes = uint64_t{1} << 62;  // no wrap-around past the end
  EXPECT_FALSE(CheckTensorPlacement(ref, "out", 16, 64).ok());
}

TEST(OpValidationTest, UpdateChecksRoutingAgainstTheGroup) {
  const GroupConfig c = Config();
  TensorView topk = View(DType::kInt32, {5, 2});
  TensorView weights = View(DType::kFp32, {5, 2});
  EXPECT_EQ(ValidateUpdate(c, topk, &weights).value(), 5);
  EXPECT_EQ(ValidateUpdate(c, View(DType::kInt64, {0, 2}), nullptr).value(), 0);
  ExpectMessage(ValidateUpdate(c, View(DType::kFp32, {5, 2}), nullptr).status(),
                StatusCode::kInvalidArgument, "topk_idx.dtype = fp32 must be int32 or int64");
  ExpectMessage(ValidateUpdate(c, View(DType::kInt32, {5, 3}), nullptr).status(),
                StatusCode::kInvalidArgument, "topk_idx.shape[1] = 3 does not match top_k = 2");
  ExpectMessage(ValidateUpdate(c, View(DType::kInt32, {9, 2}), nullptr).status(),
                StatusCode::kInvalidArgument,
                "topk_idx.shape[0] = 9 exceeds max_tokens_per_rank = 8");
  TensorView short_weights = View(DType::kFp32, {4, 2});
  ExpectMessage(ValidateUpdate(c, topk, &short_weights).status(), StatusCode::kInvalidArgument,
                "topk_weights.shape[0] = 4 does not match n = 5");
  TensorView bf16_weights = View(DType::kBf16, {5, 2});
  ExpectMessage(ValidateUpdate(c, topk, &bf16_weights).status(), StatusCode::kInvalidArgument,
                "topk_weights.dtype = bf16 does not match the expected fp32");
}

TEST(OpValidationTest, TokenRowsAndExpertOutMatchTheGroupAndHandle) {
  const GroupConfig c = Config();
  EXPECT_TRUE(ValidateTokenRows(c, View(DType::kBf16, {3, 16}), "x", 3).ok());
  ExpectMessage(ValidateTokenRows(c, View(DType::kBf16, {4, 16}), "x", 3),
                StatusCode::kInvalidArgument,
                "x.shape[0] = 4 does not match tokens bound by the last UpdateHandle = 3");
  ExpectMessage(ValidateTokenRows(c, View(DType::kBf16, {3, 32}), "out", 3),
                StatusCode::kInvalidArgument, "out.shape[1] = 32 does not match hidden = 16");
  ExpectMessage(ValidateTokenRows(c, View(DType::kFp16, {3, 16}), "x", 3),
                StatusCode::kInvalidArgument, "x.dtype = fp16 does not match the expected bf16");
  ExpectMessage(ValidateTokenRows(c, View(DType::kBf16, {48}), "x", 3),
                StatusCode::kInvalidArgument, "x.shape = [48] must have 2 dimensions");
  const HandleLayout layout = ComputeHandleLayout(c);
  const auto rows = static_cast<int64_t>(layout.recv_rows);
  EXPECT_TRUE(ValidateExpertOut(c, layout, View(DType::kBf16, {rows, 16})).ok());
  ExpectMessage(ValidateExpertOut(c, layout, View(DType::kBf16, {rows - 1, 16})),
                StatusCode::kInvalidArgument,
                fmt::format("expert_out.shape[0] = {} does not match recv_rows = {}", rows - 1,
                            rows));
}

TEST(OpValidationTest, Fp8DispatchInputIsBf16OrPrequantizedWithScales) {
  GroupConfig c = Config();
  c.hidden = 256;
  c.dispatch_format = DispatchFormat::kFp8E4m3;
  c.scale_format = ScaleFormat::kUe8m0;
  EXPECT_TRUE(ValidateDispatchInputKind(c, DType::kBf16, false).ok());
  EXPECT_TRUE(ValidateDispatchInputKind(c, DType::kFp8E4m3, true).ok());
  ExpectMessage(ValidateDispatchInputKind(c, DType::kFp8E4m3, false),
                StatusCode::kInvalidArgument,
                "x_scales is required: x is pre-quantized fp8_e4m3 (group 'g' scales are ue8m0)");
  ExpectMessage(ValidateDispatchInputKind(c, DType::kBf16, true), StatusCode::kInvalidArgument,
                "x_scales is set, but x.dtype = bf16 is not pre-quantized fp8_e4m3");
  ExpectMessage(ValidateDispatchInputKind(Config(), DType::kFp8E4m3, true),
                StatusCode::kInvalidArgument,
                "x_scales is set, but x.dtype = fp8_e4m3 is not pre-quantized fp8_e4m3 (group "
                "'g' dispatches bf16)");

  EXPECT_TRUE(ValidatePrequantizedX(c, View(DType::kFp8E4m3, {3, 256}), 3).ok());
  ExpectMessage(ValidatePrequantizedX(c, View(DType::kBf16, {3, 256}), 3),
                StatusCode::kInvalidArgument,
                "x.dtype = bf16 does not match the expected fp8_e4m3");
  EXPECT_TRUE(ValidateXScales(c, View(DType::kUint8, {3, 2}), 3).ok());
  ExpectMessage(ValidateXScales(c, View(DType::kFp32, {3, 2}), 3), StatusCode::kInvalidArgument,
                "x_scales.dtype = fp32 does not match the expected uint8");
  ExpectMessage(ValidateXScales(c, View(DType::kUint8, {3, 3}), 3), StatusCode::kInvalidArgument,
                "x_scales.shape[1] = 3 does not match hidden / 128 = 2");
  c.scale_format = ScaleFormat::kFp32;
  EXPECT_TRUE(ValidateXScales(c, View(DType::kFp32, {3, 2}), 3).ok());
}

TEST(OpValidationTest, InPlaceCombineNeedsTheTokenDtypeInRecvX) {
  EXPECT_TRUE(ValidateInPlaceCombine(Config()).ok());
  GroupConfig c = Config();
  c.hidden = 256;
  c.dispatch_format = DispatchFormat::kFp8E4m3;
  ExpectMessage(ValidateInPlaceCombine(c), StatusCode::kInvalidArgument,
                "expert_out is required: group 'g' dispatches fp8_e4m3, so recv_x cannot hold "
                "the bf16 expert outputs in place");
}

TEST(OpValidationTest, RanksSourcesAndHandleNames) {
  EXPECT_TRUE(CheckRequestRank(-1, 1).ok());
  EXPECT_TRUE(CheckRequestRank(1, 1).ok());
  ExpectMessage(CheckRequestRank(0, 1), StatusCode::kPermissionDenied,
                "rank = 0 does not match the session's rank 1");
  EXPECT_TRUE(ValidateSessionRank(1, 2).ok());
  ExpectMessage(ValidateSessionRank(2, 2), StatusCode::kInvalidArgument,
                "rank = 2 is outside the node's ranks [0, 2)");

  MemorySource source;
  source.size = 64;
  ExpectMessage(ValidateMemorySource(source, "source"), StatusCode::kInvalidArgument,
                "source.shm_name is empty");
  source.shm_name = "/epd-x";
  EXPECT_TRUE(ValidateMemorySource(source, "source").ok());
  source.size = 0;
  ExpectMessage(ValidateMemorySource(source, "source"), StatusCode::kInvalidArgument,
                "source.size = 0: nothing to register");
  source.size = 64;
  source.kind = MemorySource::Kind::kCudaIpc;
  source.ipc_handle = std::string(63, 'x');
  ExpectMessage(ValidateMemorySource(source, "source"), StatusCode::kInvalidArgument,
                "source.cuda_ipc_handle has 63 bytes; a cudaIpcMemHandle_t has 64");

  EXPECT_TRUE(ValidateHandleRequest("g", "", false).ok());
  EXPECT_FALSE(ValidateHandleRequest("", "h", false).ok());
  EXPECT_FALSE(ValidateHandleRequest("g", "", true).ok());
  EXPECT_FALSE(ValidateAttachName("").ok());
  EXPECT_TRUE(ValidateAttachName("h").ok());
}

}  // namespace
}  // namespace epd
