#include "daemon/core/group_config.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "common/limits.h"

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

TEST(GroupConfigTest, HighThroughputLayoutIsPackedAndBoundedByTheRowCapacity) {
  GroupConfig c = Standard();  // R=4 E=256 H=7168 T=128 K=8 bf16
  c.algorithm = Algorithm::kHighThroughput;
  ASSERT_TRUE(c.Validate(4).ok()) << c.Validate(4).ToString();
  EXPECT_EQ(c.recv_row_capacity(), 4 * 128);
  EXPECT_EQ(c.effective_sm_budget(), kDefaultHtSmBudget);
  EXPECT_EQ(c.expert_rows_capacity(), 4 * 128 * 8);  // min(K=8, L=64)
  HandleLayout h = ComputeHandleLayout(c);
  EXPECT_EQ(h.recv_rows, 512u);
  EXPECT_EQ(h.recv_x_bytes, 512u * 7168 * 2);
  EXPECT_EQ(h.recv_src_bytes, 512u * 2 * 4);
  EXPECT_EQ(h.recv_topk_idx_bytes, 512u * 8 * 4);
  EXPECT_EQ(h.recv_topk_weights_bytes, 512u * 8 * 4);
  EXPECT_EQ(h.recv_rank_counts_bytes, 4u * 4);
  EXPECT_EQ(h.recv_rank_offsets_bytes, 4u * 4);
  EXPECT_EQ(h.recv_counts_bytes, 64u * 4);
  EXPECT_EQ(h.recv_offsets_bytes, 65u * 4);
  EXPECT_EQ(h.expert_rows_entries, 4096u);
  EXPECT_EQ(h.recv_weights_bytes, 0u);
  EXPECT_EQ(h.dest_row_bytes, AlignUp(128u * 4 * 4));
  size_t last_end = 0;
  for (auto [offset, bytes] : {std::pair{h.recv_x_offset, h.recv_x_bytes},
                               {h.recv_src_offset, h.recv_src_bytes},
                               {h.recv_topk_idx_offset, h.recv_topk_idx_bytes},
                               {h.recv_topk_weights_offset, h.recv_topk_weights_bytes},
                               {h.recv_rank_counts_offset, h.recv_rank_counts_bytes},
                               {h.recv_rank_offsets_offset, h.recv_rank_offsets_bytes},
                               {h.recv_counts_offset, h.recv_counts_bytes},
                               {h.recv_offsets_offset, h.recv_offsets_bytes},
                               {h.expert_rows_offset, h.expert_rows_bytes}}) {
    EXPECT_GE(offset, last_end);
    EXPECT_EQ(offset % kBufferAlignment, 0u);
    last_end = offset + bytes;
  }
  EXPECT_GE(h.exported_bytes, last_end);
  // A configured capacity shrinks the receive rows; the low-latency rows would be L * C.
  c.recv_capacity = 100;
  EXPECT_EQ(ComputeHandleLayout(c).recv_rows, 100u);
}

TEST(GroupConfigTest, HighThroughputHandleFitsTheTargetShapeInOneGigabyte) {
  GroupConfig c = Standard();
  c.ranks = {0, 1};
  c.max_tokens_per_rank = 4096;
  c.algorithm = Algorithm::kHighThroughput;
  ASSERT_TRUE(c.Validate(2).ok());
  EXPECT_LE(ComputeHandleLayout(c).total_bytes(), size_t{1} << 30);
}

TEST(GroupConfigTest, HighThroughputRefusesOptionsThatDoNotApplyByName) {
  GroupConfig c = Standard();
  c.algorithm = Algorithm::kHighThroughput;
  c.layout = Layout::kRankMajor;
  EXPECT_NE(c.Validate(4).message().find("layout = rank_major"), std::string::npos);
  c = Standard();
  c.algorithm = Algorithm::kHighThroughput;
  c.expert_capacity = 64;
  EXPECT_NE(c.Validate(4).message().find("expert_capacity=64"), std::string::npos);
  c = Standard();
  c.algorithm = Algorithm::kHighThroughput;
  c.dispatch_format = DispatchFormat::kFp8E4m3;
  EXPECT_TRUE(c.Validate(4).ok()) << c.Validate(4).ToString();
  c.hidden = 7168 + 64;  // the fp8 rule still holds: blocks of 128 channels
  EXPECT_NE(c.Validate(4).message().find("multiple of 128"), std::string::npos);
  c = Standard();
  c.algorithm = Algorithm::kHighThroughput;
  c.recv_capacity = -1;
  EXPECT_NE(c.Validate(4).message().find("recv_capacity=-1"), std::string::npos);
  c.recv_capacity = 4 * 128 + 1;
  EXPECT_NE(c.Validate(4).message().find("recv_capacity=513 exceeds"), std::string::npos);
  c.recv_capacity = 0;
  c.sm_budget = kMaxHtSmBudget + 1;
  EXPECT_NE(c.Validate(4).message().find(fmt::format("sm_budget={}", kMaxHtSmBudget + 1)),
            std::string::npos);
  c = Standard();
  c.recv_capacity = 10;  // low-latency
  EXPECT_NE(c.Validate(4).message().find("apply to algorithm = high_throughput only"),
            std::string::npos);
}

TEST(GroupConfigTest, AutoPicksHighThroughputFromTheTokenThreshold) {
  GroupConfig c = Standard();
  c.algorithm = Algorithm::kAuto;
  EXPECT_EQ(c.Validate(4).code(), StatusCode::kInvalidArgument) << "unresolved auto";
  c.max_tokens_per_rank = kAutoHighThroughputMinTokens - 1;
  c.ResolveAlgorithm();
  EXPECT_EQ(c.algorithm, Algorithm::kLowLatency);
  c.algorithm = Algorithm::kAuto;
  c.max_tokens_per_rank = kAutoHighThroughputMinTokens;
  c.ResolveAlgorithm();
  EXPECT_EQ(c.algorithm, Algorithm::kHighThroughput);
  c.algorithm = Algorithm::kAuto;
  c.dispatch_format = DispatchFormat::kFp8E4m3;  // fp8 groups take high_throughput by name
  c.ResolveAlgorithm();
  EXPECT_EQ(c.algorithm, Algorithm::kLowLatency);
  c.algorithm = Algorithm::kHighThroughput;
  c.ResolveAlgorithm();
  EXPECT_EQ(c.algorithm, Algorithm::kHighThroughput);
  c.algorithm = Algorithm::kLowLatency;
  c.dispatch_format = DispatchFormat::kTokenDType;
  c.ResolveAlgorithm();
  EXPECT_EQ(c.algorithm, Algorithm::kLowLatency) << "an explicit choice stays";
}

// Spanning groups serve high_throughput when they name it (the cpu backend's transport), but
// auto keeps them low-latency: the cuda backend does not serve them.
TEST(GroupConfigTest, SpanningGroupsTakeHighThroughputByNameOnly) {
  GroupConfig c = Standard();
  c.max_tokens_per_rank = kAutoHighThroughputMinTokens;
  c.spans_nodes = true;
  c.span = GroupConfig::Span{0, 2, 2};
  c.algorithm = Algorithm::kAuto;
  c.ResolveAlgorithm();
  EXPECT_EQ(c.algorithm, Algorithm::kLowLatency);
  c.algorithm = Algorithm::kHighThroughput;
  EXPECT_TRUE(c.Validate(2).ok()) << c.Validate(2).ToString();
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

// The packed high-throughput layout: M e4m3 rows and M scale rows; the payload is part of the
// string every node of a spanning group compares.
TEST(GroupConfigFp8Test, HighThroughputLayoutHoldsE4m3RowsAndScales) {
  for (ScaleFormat format : {ScaleFormat::kFp32, ScaleFormat::kUe8m0}) {
    GroupConfig c = Standard();
    c.algorithm = Algorithm::kHighThroughput;
    c.recv_capacity = 300;
    c.dispatch_format = DispatchFormat::kFp8E4m3;
    c.scale_format = format;
    ASSERT_TRUE(c.Validate(4).ok()) << c.Validate(4).ToString();
    const HandleLayout h = ComputeHandleLayout(c);
    EXPECT_EQ(h.recv_rows, 300u);
    EXPECT_EQ(h.recv_x_bytes, 300u * 7168);
    EXPECT_EQ(h.recv_scales_bytes, 300u * 56 * (format == ScaleFormat::kFp32 ? 4 : 1));
    EXPECT_EQ(h.recv_scales_offset % kBufferAlignment, 0u);
    EXPECT_GE(h.recv_scales_offset, h.expert_rows_offset + h.expert_rows_bytes);
    EXPECT_EQ(h.exported_bytes, AlignUp(h.recv_scales_offset + h.recv_scales_bytes));
    EXPECT_NE(c.ToString().find(fmt::format("fp8_e4m3/{}", ScaleFormatName(format))),
              std::string::npos)
        << c.ToString();
  }
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
