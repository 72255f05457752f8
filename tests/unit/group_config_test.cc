#include "daemon/core/group_config.h"

#include <gtest/gtest.h>

namespace epd {
namespace {

GroupConfig Standard() {
  GroupConfig c;
  c.name = "moe";
  c.ranks = {0, 1, 2, 3};
  c.experts = 256;
  c.hidden = 7168;
  c.max_tokens_per_rank = 128;
  c.top_k = 8;
  c.dtype = DType::kBf16;
  return c;
}

void ExpectInvalid(const GroupConfig& c, const std::string& needle) {
  Status status = c.Validate(4);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.ToString();
  EXPECT_NE(status.message().find(needle), std::string::npos) << status.message();
}

TEST(GroupConfigTest, StandardConfigIsValid) {
  GroupConfig c = Standard();
  EXPECT_TRUE(c.Validate(4).ok());
  EXPECT_EQ(c.local_experts(), 64);
  EXPECT_EQ(c.capacity(), 4 * 128);
  EXPECT_EQ(c.rank_of_expert(63), 0);
  EXPECT_EQ(c.rank_of_expert(64), 1);
  EXPECT_EQ(c.GroupRankOf(2), 2);
  EXPECT_EQ(c.GroupRankOf(7), -1);
}

TEST(GroupConfigTest, HighThroughputIsUnimplementedRatherThanServedByLowLatencyKernels) {
  GroupConfig c = Standard();
  c.algorithm = Algorithm::kHighThroughput;
  Status status = c.Validate(4);
  EXPECT_EQ(status.code(), StatusCode::kUnimplemented) << status.ToString();
  EXPECT_NE(status.message().find("algorithm = high_throughput"), std::string::npos)
      << status.message();
}

TEST(GroupConfigTest, RejectsEachBadFieldByName) {
  GroupConfig c = Standard();
  c.experts = 250;
  ExpectInvalid(c, "experts=250");
  c = Standard();
  c.hidden = 7170;
  ExpectInvalid(c, "hidden=7170");
  c = Standard();
  c.max_tokens_per_rank = 0;
  ExpectInvalid(c, "max_tokens_per_rank=0");
  c = Standard();
  c.top_k = 0;
  ExpectInvalid(c, "top_k=0");
  c = Standard();
  c.ranks = {0, 1, 1, 2};
  ExpectInvalid(c, "rank 1 is listed twice");
  c = Standard();
  c.ranks = {0, 4};
  ExpectInvalid(c, "rank 4 is outside");
  c = Standard();
  c.dtype = DType::kInt32;
  ExpectInvalid(c, "dtype=int32");
  c = Standard();
  c.name = "";
  ExpectInvalid(c, "group.name");
  c = Standard();
  c.expert_capacity = -1;
  ExpectInvalid(c, "expert_capacity=-1");
}

TEST(GroupConfigTest, ExpertMajorLayoutIsPackedAndAligned) {
  GroupConfig c = Standard();
  HandleLayout h = ComputeHandleLayout(c);
  const size_t rows = 64 * 512;
  EXPECT_EQ(h.recv_rows, rows);
  EXPECT_EQ(h.recv_x_offset, 0u);
  EXPECT_EQ(h.recv_x_bytes, rows * 7168 * 2);
  EXPECT_EQ(h.recv_src_bytes, rows * 3 * 4);
  EXPECT_EQ(h.recv_weights_bytes, rows * 4);
  EXPECT_EQ(h.recv_counts_bytes, 64u * 4);
  EXPECT_EQ(h.recv_offsets_bytes, 64u * 4);
  EXPECT_EQ(h.recv_topk_idx_bytes, 0u);
  for (size_t offset : {h.recv_src_offset, h.recv_weights_offset, h.recv_counts_offset,
                        h.recv_offsets_offset, h.exported_bytes}) {
    EXPECT_EQ(offset % kBufferAlignment, 0u);
  }
  EXPECT_GE(h.recv_src_offset, h.recv_x_offset + h.recv_x_bytes);
  EXPECT_GE(h.exported_bytes, h.recv_offsets_offset + h.recv_offsets_bytes);
  EXPECT_EQ(h.topk_idx_bytes, AlignUp(128 * 8 * 4));
  EXPECT_EQ(h.expert_counts_bytes, AlignUp(256 * 4));
}

TEST(GroupConfigTest, RankMajorLayoutHasOneRowPerSourceToken) {
  GroupConfig c = Standard();
  c.layout = Layout::kRankMajor;
  HandleLayout h = ComputeHandleLayout(c);
  EXPECT_EQ(h.recv_rows, 4u * 128);
  EXPECT_EQ(h.recv_topk_idx_bytes, 4u * 128 * 8 * 4);
  EXPECT_EQ(h.recv_topk_weights_bytes, 4u * 128 * 8 * 4);
  EXPECT_EQ(h.recv_counts_bytes, 4u * 4);
  EXPECT_EQ(h.recv_src_bytes, 0u);
  EXPECT_EQ(h.recv_offsets_bytes, 0u);
}

TEST(GroupConfigTest, CapacityOverrideShrinksTheReceiveBuffer) {
  GroupConfig c = Standard();
  c.expert_capacity = 32;
  EXPECT_EQ(ComputeHandleLayout(c).recv_rows, 64u * 32);
  GroupConfig other = c;
  EXPECT_TRUE(c.SameShape(other));
  other.expert_capacity = 0;
  EXPECT_FALSE(c.SameShape(other));
}

}  // namespace
}  // namespace epd

namespace epd {
namespace {

TEST(GroupConfigFp8Test, ValidatesThePayloadFields) {
  GroupConfig c = Standard();
  c.dispatch_format = DispatchFormat::kFp8E4m3;
  EXPECT_TRUE(c.Validate(4).ok());
  c.dtype = DType::kFp16;
  ExpectInvalid(c, "dispatch_dtype=fp8_e4m3 quantizes bf16 tokens, but dtype=fp16");
  c = Standard();
  c.dispatch_format = DispatchFormat::kFp8E4m3;
  c.hidden = 7168 + 64;
  ExpectInvalid(c, "hidden=7232 to be a multiple of 128");
}

TEST(GroupConfigFp8Test, LayoutHoldsE4m3RowsAndScalesInBothLayouts) {
  for (Layout layout : {Layout::kExpertMajor, Layout::kRankMajor}) {
    for (ScaleFormat format : {ScaleFormat::kFp32, ScaleFormat::kUe8m0}) {
      GroupConfig c = Standard();
      c.layout = layout;
      c.dispatch_format = DispatchFormat::kFp8E4m3;
      c.scale_format = format;
      const HandleLayout h = ComputeHandleLayout(c);
      const size_t rows = layout == Layout::kExpertMajor ? 64u * 512 : 4u * 128;
      EXPECT_EQ(h.recv_rows, rows);
      EXPECT_EQ(h.recv_x_bytes, rows * 7168);  // one byte per element
      EXPECT_EQ(c.scale_blocks(), 56);
      EXPECT_EQ(h.recv_scales_bytes, rows * 56 * (format == ScaleFormat::kFp32 ? 4 : 1));
      EXPECT_EQ(h.recv_scales_offset % kBufferAlignment, 0u);
      EXPECT_GE(h.exported_bytes, h.recv_scales_offset + h.recv_scales_bytes);
      EXPECT_GE(h.recv_scales_offset, h.recv_x_offset + h.recv_x_bytes);
    }
  }
  const HandleLayout bf16 = ComputeHandleLayout(Standard());
  EXPECT_EQ(bf16.recv_scales_bytes, 0u);
  EXPECT_EQ(bf16.recv_x_bytes, 64u * 512 * 7168 * 2);
}

TEST(GroupConfigFp8Test, PayloadIsPartOfTheShape) {
  GroupConfig a = Standard(), b = Standard();
  b.dispatch_format = DispatchFormat::kFp8E4m3;
  EXPECT_FALSE(a.SameShape(b));
  a.dispatch_format = DispatchFormat::kFp8E4m3;
  EXPECT_TRUE(a.SameShape(b));
  b.scale_format = ScaleFormat::kUe8m0;
  EXPECT_FALSE(a.SameShape(b));
  EXPECT_NE(b.ToString().find("fp8_e4m3/ue8m0"), std::string::npos) << b.ToString();
}

}  // namespace
}  // namespace epd
