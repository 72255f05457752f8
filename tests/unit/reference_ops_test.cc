// The reference semantics on a case small enough to work out by hand (R=2, E=4, K=2, T=3).
#include "daemon/backends/cpu/reference_ops.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "common/fp8.h"

namespace epd::reference {
namespace {

constexpr int kHidden = 8;

GroupConfig TinyConfig(Layout layout, Algorithm algorithm = Algorithm::kLowLatency) {
  GroupConfig c;
  c.name = "tiny";
  c.ranks = {0, 1};
  c.experts = 4;
  c.hidden = kHidden;
  c.max_tokens_per_rank = 3;
  c.top_k = 2;
  c.dtype = DType::kFp32;
  c.layout = layout;
  c.algorithm = algorithm;
  return c;
}

// Rank 0 has 3 tokens routed {1,2}, {3,-1}, {0,2}; rank 1 has 2 tokens routed {2,0}, {-1,-1}.
struct Fixture {
  explicit Fixture(Layout output_layout, Algorithm algorithm = Algorithm::kLowLatency)
      : config(TinyConfig(output_layout, algorithm)), layout(ComputeHandleLayout(config)) {
    const std::vector<std::vector<int32_t>> ids = {{1, 2, 3, -1, 0, 2}, {2, 0, -1, -1}};
    const std::vector<int> tokens = {3, 2};
    for (int r = 0; r < 2; ++r) {
      Rank& rank = ranks[r];
      rank.n = tokens[r];
      rank.x.resize(rank.n * kHidden);
      for (int t = 0; t < rank.n; ++t) {
        for (int h = 0; h < kHidden; ++h) rank.x[t * kHidden + h] = 100.0f * r + 10.0f * t + h;
      }
      rank.weights.resize(rank.n * 2);
      for (size_t i = 0; i < rank.weights.size(); ++i) rank.weights[i] = 0.25f * (i + 1);
      rank.topk.resize(6);
      rank.norm_weights.resize(6);
      rank.counts.resize(4);
      Status status = BindRouting(config, ids[r].data(), DType::kInt32, rank.weights.data(), rank.n,
                                  rank.topk.data(), rank.norm_weights.data(), rank.counts.data());
      EXPECT_TRUE(status.ok()) << status.ToString();
      rank.exported.assign(layout.exported_bytes, std::byte{0x7f});
      rank.slots.assign(6, 99);
    }
    for (int r = 0; r < 2; ++r) {
      sources.push_back(SourceRank{ranks[r].n, ranks[r].x.data(), ranks[r].topk.data(),
                                   ranks[r].norm_weights.data(), ranks[r].counts.data()});
    }
  }

  void DispatchAll() {
    ASSERT_TRUE(CheckCapacity(config, sources).ok());
    for (int r = 0; r < 2; ++r) {
      DispatchReceive(config, r, sources, Out(r));
      ComputeSlots(config, r, sources, ranks[r].slots.data());
    }
  }
  ReceiveBuffers Out(int r) { return ReceiveBuffersAt(ranks[r].exported.data(), layout); }
  const float* Row(int r, int row) {
    return static_cast<const float*>(Out(r).recv_x) + row * kHidden;
  }

  struct Rank {
    int n = 0;
    std::vector<float> x, weights, norm_weights;
    std::vector<int32_t> topk, counts, slots;
    std::vector<std::byte> exported;
  };
  GroupConfig config;
  HandleLayout layout;
  Rank ranks[2];
  std::vector<SourceRank> sources;
};

TEST(ReferenceOpsTest, BindRoutingCountsSelectionsAndDefaultsWeights) {
  Fixture f(Layout::kExpertMajor);
  EXPECT_EQ(f.ranks[0].counts, (std::vector<int32_t>{1, 1, 2, 1}));
  EXPECT_EQ(f.ranks[1].counts, (std::vector<int32_t>{1, 0, 1, 0}));
  int32_t topk[2], counts[4];
  float weights[2];
  const int64_t ids64[2] = {3, -1};
  ASSERT_TRUE(BindRouting(f.config, ids64, DType::kInt64, nullptr, 1, topk, weights, counts).ok());
  EXPECT_EQ(weights[0], 1.0f);
  EXPECT_EQ(counts[3], 1);
}

TEST(ReferenceOpsTest, BindRoutingRejectsIdsOutsideTheExperts) {
  Fixture f(Layout::kExpertMajor);
  int32_t topk[4] = {7, 7, 7, 7}, counts[4];
  float weights[4];
  const int32_t high[4] = {0, 1, 2, 4};
  Status status = BindRouting(f.config, high, DType::kInt32, nullptr, 2, topk, weights, counts);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "topk_idx[1, 1] = 4 is outside [-1, 4)");
  EXPECT_EQ(topk[0], 7) << "a rejected update must not write";
  const int64_t low[2] = {-2, 0};
  status = BindRouting(f.config, low, DType::kInt64, nullptr, 1, topk, weights, counts);
  EXPECT_EQ(status.message(), "topk_idx[0, 0] = -2 is outside [-1, 4)");
}

TEST(ReferenceOpsTest, ExpertMajorRowsArePackedInSourceTokenKOrder) {
  Fixture f(Layout::kExpertMajor);
  f.DispatchAll();
  // Rank 0 holds experts 0 and 1: expert 0 <- (s0,t2,k0), (s1,t0,k1); expert 1 <- (s0,t0,k0).
  ReceiveBuffers r0 = f.Out(0);
  EXPECT_EQ(r0.recv_counts[0], 2);
  EXPECT_EQ(r0.recv_counts[1], 1);
  EXPECT_EQ(r0.recv_offsets[0], 0);
  EXPECT_EQ(r0.recv_offsets[1], 2);
  const std::vector<int32_t> src0 = {0, 2, 0, 1, 0, 1, 0, 0, 0};
  EXPECT_EQ(std::vector<int32_t>(r0.recv_src, r0.recv_src + 9), src0);
  EXPECT_EQ(f.Row(0, 0)[3], 23.0f);      // rank 0 token 2
  EXPECT_EQ(f.Row(0, 1)[3], 103.0f);     // rank 1 token 0
  EXPECT_EQ(r0.recv_weights[0], 1.25f);  // rank 0 weight index 4
  EXPECT_EQ(r0.recv_weights[1], 0.5f);   // rank 1 weight index 1
  // Rank 1 holds experts 2 and 3: expert 2 <- (s0,t0,k1), (s0,t2,k1), (s1,t0,k0); 3 <- (s0,t1,k0).
  ReceiveBuffers r1 = f.Out(1);
  EXPECT_EQ(r1.recv_counts[0], 3);
  EXPECT_EQ(r1.recv_counts[1], 1);
  EXPECT_EQ(r1.recv_offsets[1], 3);
  const std::vector<int32_t> src1 = {0, 0, 1, 0, 2, 1, 1, 0, 0, 0, 1, 0};
  EXPECT_EQ(std::vector<int32_t>(r1.recv_src, r1.recv_src + 12), src1);
  // Slots route combine back to those rows.
  EXPECT_EQ(f.ranks[0].slots, (std::vector<int32_t>{2, 0, 3, -1, 0, 1}));
  EXPECT_EQ(std::vector<int32_t>(f.ranks[1].slots.begin(), f.ranks[1].slots.begin() + 4),
            (std::vector<int32_t>{2, 1, -1, -1}));
}

TEST(ReferenceOpsTest, CapacityOverflowNamesTheExpert) {
  Fixture f(Layout::kExpertMajor);
  f.config.expert_capacity = 2;  // expert 2 receives 3 rows
  Status status = CheckCapacity(f.config, f.sources);
  EXPECT_EQ(status.code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(status.message(),
            "group 'tiny': expert 2 received 3 rows, more than expert_capacity=2");
}

TEST(ReferenceOpsTest, RankMajorRowsAreZeroWhereNoTokenCame) {
  Fixture f(Layout::kRankMajor);
  f.DispatchAll();
  ReceiveBuffers r0 = f.Out(0);
  EXPECT_EQ(r0.recv_counts[0], 3);
  EXPECT_EQ(r0.recv_counts[1], 2);
  // Row s*T+t. Rank 0 token 1 goes only to rank 1: zero row, ids -1.
  EXPECT_EQ(f.Row(0, 0)[1], 1.0f);
  EXPECT_EQ(f.Row(0, 1)[1], 0.0f);
  EXPECT_EQ(f.Row(0, 2)[1], 21.0f);
  EXPECT_EQ(f.Row(0, 3)[1], 101.0f);
  EXPECT_EQ(f.Row(0, 5)[1], 0.0f);  // t >= n of rank 1
  const std::vector<int32_t> ids0 = {1, -1, -1, -1, 0, -1, -1, 0, -1, -1, -1, -1};
  EXPECT_EQ(std::vector<int32_t>(r0.recv_topk_idx, r0.recv_topk_idx + 12), ids0);
  EXPECT_EQ(r0.recv_topk_weights[0], 0.25f);
  EXPECT_EQ(r0.recv_topk_weights[1], 0.0f);
  EXPECT_EQ(r0.recv_topk_weights[7], 0.5f);
  // Each destination rank once, at its first k; rank 0 token 0 hits ranks 0 and 1.
  EXPECT_EQ(f.ranks[0].slots, (std::vector<int32_t>{0, 0, 1, -1, 2, 2}));
}

TEST(ReferenceOpsTest, CombineOfIdentityExpertsSumsTheWeights) {
  Fixture f(Layout::kExpertMajor);
  f.DispatchAll();
  std::vector<const void*> expert_out = {f.Out(0).recv_x, f.Out(1).recv_x};
  std::vector<float> out(3 * kHidden, -1.0f);
  Combine(f.config, f.sources[0], f.ranks[0].slots.data(), expert_out, out.data());
  const float weight_sums[3] = {0.25f + 0.5f, 0.75f, 1.25f + 1.5f};
  for (int t = 0; t < 3; ++t) {
    for (int h = 0; h < kHidden; ++h) {
      EXPECT_EQ(out[t * kHidden + h], weight_sums[t] * (10.0f * t + h)) << t << "," << h;
    }
  }
}

TEST(ReferenceOpsTest, RankMajorCombineAddsEachRankOnceUnweighted) {
  Fixture f(Layout::kRankMajor);
  f.DispatchAll();
  std::vector<const void*> expert_out = {f.Out(0).recv_x, f.Out(1).recv_x};
  std::vector<float> out(3 * kHidden);
  Combine(f.config, f.sources[0], f.ranks[0].slots.data(), expert_out, out.data());
  // Token 0 reaches ranks 0 and 1, token 1 only rank 1, token 2 both.
  const float copies[3] = {2.0f, 1.0f, 2.0f};
  for (int t = 0; t < 3; ++t) EXPECT_EQ(out[t * kHidden + 5], copies[t] * (10.0f * t + 5));
}

// High-throughput on the same routing. Rank 0 (experts 0, 1) receives (s0,t0), (s0,t2),
// (s1,t0); rank 1 (experts 2, 3) receives (s0,t0), (s0,t1), (s0,t2), (s1,t0).
Fixture HighThroughput() { return Fixture(Layout::kExpertMajor, Algorithm::kHighThroughput); }

TEST(ReferenceOpsTest, HighThroughputRowsArePackedBySourceRankThenToken) {
  Fixture f = HighThroughput();
  f.DispatchAll();
  ReceiveBuffers r0 = f.Out(0);
  EXPECT_EQ(std::vector<int32_t>(r0.recv_rank_counts, r0.recv_rank_counts + 2),
            (std::vector<int32_t>{2, 1}));
  EXPECT_EQ(std::vector<int32_t>(r0.recv_rank_offsets, r0.recv_rank_offsets + 2),
            (std::vector<int32_t>{0, 2}));
  EXPECT_EQ(std::vector<int32_t>(r0.recv_src, r0.recv_src + 6),
            (std::vector<int32_t>{0, 0, 0, 2, 1, 0}));
  EXPECT_EQ(f.Row(0, 0)[3], 3.0f);
  EXPECT_EQ(f.Row(0, 1)[3], 23.0f);
  EXPECT_EQ(f.Row(0, 2)[3], 103.0f);
  // Local expert ids where the expert lives here, k positions kept; weights 0 elsewhere.
  EXPECT_EQ(std::vector<int32_t>(r0.recv_topk_idx, r0.recv_topk_idx + 6),
            (std::vector<int32_t>{1, -1, 0, -1, -1, 0}));
  EXPECT_EQ(std::vector<float>(r0.recv_topk_weights, r0.recv_topk_weights + 6),
            (std::vector<float>{0.25f, 0.0f, 1.25f, 0.0f, 0.0f, 0.5f}));
  // Gather list: expert 0 <- rows 1, 2; expert 1 <- row 0.
  EXPECT_EQ(std::vector<int32_t>(r0.recv_counts, r0.recv_counts + 2), (std::vector<int32_t>{2, 1}));
  EXPECT_EQ(std::vector<int32_t>(r0.recv_offsets, r0.recv_offsets + 3),
            (std::vector<int32_t>{0, 2, 3}));
  EXPECT_EQ(std::vector<int32_t>(r0.expert_rows, r0.expert_rows + 3),
            (std::vector<int32_t>{1, 2, 0}));
  // Rows past the total are not written (0x7f filler stays).
  EXPECT_EQ(std::to_integer<int>(
                static_cast<const std::byte*>(r0.recv_x)[3 * kHidden * sizeof(float)]),
            0x7f);

  ReceiveBuffers r1 = f.Out(1);
  EXPECT_EQ(std::vector<int32_t>(r1.recv_rank_counts, r1.recv_rank_counts + 2),
            (std::vector<int32_t>{3, 1}));
  EXPECT_EQ(std::vector<int32_t>(r1.recv_rank_offsets, r1.recv_rank_offsets + 2),
            (std::vector<int32_t>{0, 3}));
  EXPECT_EQ(std::vector<int32_t>(r1.recv_topk_idx, r1.recv_topk_idx + 8),
            (std::vector<int32_t>{-1, 0, 1, -1, -1, 0, 0, -1}));
  EXPECT_EQ(std::vector<int32_t>(r1.recv_offsets, r1.recv_offsets + 3),
            (std::vector<int32_t>{0, 3, 4}));
  EXPECT_EQ(std::vector<int32_t>(r1.expert_rows, r1.expert_rows + 4),
            (std::vector<int32_t>{0, 2, 3, 1}));
  // Each destination rank once per token, at the packed row; rank 1's rows follow rank 0's.
  EXPECT_EQ(f.ranks[0].slots, (std::vector<int32_t>{0, 0, 1, -1, 1, 2}));
  EXPECT_EQ(std::vector<int32_t>(f.ranks[1].slots.begin(), f.ranks[1].slots.begin() + 4),
            (std::vector<int32_t>{3, 2, -1, -1}));
}

TEST(ReferenceOpsTest, HighThroughputGatherListsARowOncePerExpert) {
  Fixture f = HighThroughput();
  const int32_t twice[6] = {1, 1, -1, -1, -1, -1};  // token 0 selects expert 1 at k 0 and 1
  ASSERT_TRUE(BindRouting(f.config, twice, DType::kInt32, nullptr, 3, f.ranks[0].topk.data(),
                          f.ranks[0].norm_weights.data(), f.ranks[0].counts.data())
                  .ok());
  f.DispatchAll();
  ReceiveBuffers r0 = f.Out(0);
  EXPECT_EQ(std::vector<int32_t>(r0.recv_topk_idx, r0.recv_topk_idx + 2),
            (std::vector<int32_t>{1, 1}));
  EXPECT_EQ(std::vector<int32_t>(r0.recv_counts, r0.recv_counts + 2), (std::vector<int32_t>{1, 1}));
  EXPECT_EQ(std::vector<int32_t>(r0.expert_rows, r0.expert_rows + 2),
            (std::vector<int32_t>{1, 0}));
  EXPECT_EQ(f.ranks[0].slots, (std::vector<int32_t>{0, -1, -1, -1, -1, -1}));
}

TEST(ReferenceOpsTest, HighThroughputCapacityOverflowNamesTheRankAndRows) {
  Fixture f = HighThroughput();
  f.config.recv_capacity = 3;  // rank 1 receives 4 rows
  Status status = CheckCapacity(f.config, f.sources);
  EXPECT_EQ(status.code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(status.message(),
            "group 'tiny': group rank 1 would receive 4 rows, more than recv_capacity=3");
  f.config.recv_capacity = 4;
  EXPECT_TRUE(CheckCapacity(f.config, f.sources).ok());
}

TEST(ReferenceOpsTest, HighThroughputCombineAddsEachRankOnceUnweighted) {
  Fixture f = HighThroughput();
  f.DispatchAll();
  std::vector<const void*> expert_out = {f.Out(0).recv_x, f.Out(1).recv_x};
  std::vector<float> out(3 * kHidden);
  Combine(f.config, f.sources[0], f.ranks[0].slots.data(), expert_out, out.data());
  const float copies[3] = {2.0f, 1.0f, 2.0f};
  for (int t = 0; t < 3; ++t) EXPECT_EQ(out[t * kHidden + 5], copies[t] * (10.0f * t + 5));
  Combine(f.config, f.sources[1], f.ranks[1].slots.data(), expert_out, out.data());
  EXPECT_EQ(out[5], 2.0f * 105.0f);
  EXPECT_EQ(out[kHidden + 5], 0.0f);  // all -1: nothing contributes
}

// FP8 dispatch on the same routing, H = 256 (two scale blocks): every received row is the
// quantized source token (or the source's own bytes when it pre-quantized them).
struct Fp8Case {
  Fp8Case(Layout output_layout, ScaleFormat format, bool prequantized,
          Algorithm algorithm = Algorithm::kLowLatency) {
    config = TinyConfig(output_layout, algorithm);
    config.hidden = kFp8Hidden;
    config.dtype = DType::kBf16;
    config.dispatch_format = DispatchFormat::kFp8E4m3;
    config.scale_format = format;
    layout = ComputeHandleLayout(config);
    const std::vector<std::vector<int32_t>> ids = {{1, 2, 3, -1, 0, 2}, {2, 0, -1, -1}};
    const int tokens[2] = {3, 2};
    const size_t scale_bytes = config.scale_row_bytes();
    for (int r = 0; r < 2; ++r) {
      Rank& rank = ranks[r];
      rank.n = tokens[r];
      for (int i = 0; i < rank.n * kFp8Hidden; ++i) {
        rank.x.push_back(FloatToBf16((i % 7 - 3) * (1.0f + r) * (1 + i / 128) * 0.3f));
      }
      rank.q.resize(rank.n * kFp8Hidden);
      rank.scales.resize(rank.n * scale_bytes);
      for (int t = 0; t < rank.n; ++t) {
        QuantizeRowE4m3(rank.x.data() + t * kFp8Hidden, kFp8Hidden, format,
                        rank.q.data() + t * kFp8Hidden, rank.scales.data() + t * scale_bytes);
      }
      if (prequantized) {  // a frontend's own quantizer: different bytes, copied untouched
        for (size_t i = 0; i < rank.q.size(); ++i) rank.q[i] = static_cast<uint8_t>(i * 13 + r);
        for (size_t i = 0; i < rank.scales.size(); ++i)
          rank.scales[i] = static_cast<uint8_t>(i + 1);
      }
      rank.topk.resize(6);
      rank.weights.resize(6);
      rank.counts.resize(4);
      EXPECT_TRUE(BindRouting(config, ids[r].data(), DType::kInt32, nullptr, rank.n,
                              rank.topk.data(), rank.weights.data(), rank.counts.data())
                      .ok());
      rank.exported.assign(layout.exported_bytes, std::byte{0x7f});
      SourceRank source{rank.n, rank.x.data(), rank.topk.data(), rank.weights.data(),
                        rank.counts.data()};
      if (prequantized) {
        source.x = rank.q.data();
        source.x_scales = rank.scales.data();
      }
      sources.push_back(source);
    }
    for (int r = 0; r < 2; ++r) {
      DispatchReceive(config, r, sources, ReceiveBuffersAt(ranks[r].exported.data(), layout));
    }
  }
  // Received row `row` of rank d equals token t of rank s (bytes and scales).
  void ExpectRow(int d, size_t row, int s, int t) {
    ReceiveBuffers out = ReceiveBuffersAt(ranks[d].exported.data(), layout);
    const size_t scale_bytes = config.scale_row_bytes();
    EXPECT_EQ(std::memcmp(static_cast<uint8_t*>(out.recv_x) + row * kFp8Hidden,
                          ranks[s].q.data() + t * kFp8Hidden, kFp8Hidden),
              0)
        << "rank " << d << " row " << row;
    EXPECT_EQ(std::memcmp(static_cast<uint8_t*>(out.recv_scales) + row * scale_bytes,
                          ranks[s].scales.data() + t * scale_bytes, scale_bytes),
              0)
        << "scales of rank " << d << " row " << row;
  }
  void ExpectZeroRow(int d, size_t row) {
    ReceiveBuffers out = ReceiveBuffersAt(ranks[d].exported.data(), layout);
    const size_t scale_bytes = config.scale_row_bytes();
    for (int h = 0; h < kFp8Hidden; ++h) {
      ASSERT_EQ(static_cast<uint8_t*>(out.recv_x)[row * kFp8Hidden + h], 0) << row;
    }
    for (size_t b = 0; b < scale_bytes; ++b) {
      ASSERT_EQ(static_cast<uint8_t*>(out.recv_scales)[row * scale_bytes + b], 0) << row;
    }
  }

  static constexpr int kFp8Hidden = 256;
  struct Rank {
    int n = 0;
    std::vector<uint16_t> x;
    std::vector<uint8_t> q, scales;
    std::vector<float> weights;
    std::vector<int32_t> topk, counts;
    std::vector<std::byte> exported;
  };
  GroupConfig config;
  HandleLayout layout;
  Rank ranks[2];
  std::vector<SourceRank> sources;
};

TEST(ReferenceOpsFp8Test, ExpertMajorRowsAreTheQuantizedTokens) {
  for (ScaleFormat format : {ScaleFormat::kFp32, ScaleFormat::kUe8m0}) {
    for (bool prequantized : {false, true}) {
      SCOPED_TRACE(::testing::Message() << ScaleFormatName(format) << " pre " << prequantized);
      Fp8Case f(Layout::kExpertMajor, format, prequantized);
      // Same placement as ExpertMajorRowsArePackedInSourceTokenKOrder.
      f.ExpectRow(0, 0, 0, 2);
      f.ExpectRow(0, 1, 1, 0);
      f.ExpectRow(0, 2, 0, 0);
      f.ExpectRow(1, 0, 0, 0);
      f.ExpectRow(1, 1, 0, 2);
      f.ExpectRow(1, 2, 1, 0);
      f.ExpectRow(1, 3, 0, 1);
    }
  }
}

TEST(ReferenceOpsFp8Test, RankMajorAbsentRowsAreZeroInRowsAndScales) {
  for (ScaleFormat format : {ScaleFormat::kFp32, ScaleFormat::kUe8m0}) {
    for (bool prequantized : {false, true}) {
      SCOPED_TRACE(::testing::Message() << ScaleFormatName(format) << " pre " << prequantized);
      Fp8Case f(Layout::kRankMajor, format, prequantized);
      f.ExpectRow(0, 0, 0, 0);
      f.ExpectZeroRow(0, 1);  // rank 0 token 1 goes only to rank 1
      f.ExpectRow(0, 2, 0, 2);
      f.ExpectRow(0, 3, 1, 0);
      f.ExpectZeroRow(0, 4);  // rank 1 token 1 has no expert
      f.ExpectZeroRow(0, 5);  // t >= n
      f.ExpectRow(1, 1, 0, 1);
    }
  }
}

// High-throughput: the same rows in the packed order of HighThroughputRowsArePackedBySource-
// RankThenToken, each token quantized (or copied) once per destination row, scales beside it;
// rows past the total keep their old bytes in recv_x and recv_scales.
TEST(ReferenceOpsFp8Test, HighThroughputPackedRowsAreTheQuantizedTokens) {
  for (ScaleFormat format : {ScaleFormat::kFp32, ScaleFormat::kUe8m0}) {
    for (bool prequantized : {false, true}) {
      SCOPED_TRACE(::testing::Message() << ScaleFormatName(format) << " pre " << prequantized);
      Fp8Case f(Layout::kExpertMajor, format, prequantized, Algorithm::kHighThroughput);
      f.ExpectRow(0, 0, 0, 0);
      f.ExpectRow(0, 1, 0, 2);
      f.ExpectRow(0, 2, 1, 0);
      f.ExpectRow(1, 0, 0, 0);
      f.ExpectRow(1, 1, 0, 1);
      f.ExpectRow(1, 2, 0, 2);
      f.ExpectRow(1, 3, 1, 0);
      const ReceiveBuffers r0 = ReceiveBuffersAt(f.ranks[0].exported.data(), f.layout);
      EXPECT_EQ(static_cast<const uint8_t*>(r0.recv_x)[3 * Fp8Case::kFp8Hidden], 0x7f);
      EXPECT_EQ(static_cast<const uint8_t*>(r0.recv_scales)[3 * f.config.scale_row_bytes()],
                0x7f);
    }
  }
}

TEST(ReferenceOpsFp8Test, QuantizedRowsDequantizeCloseToTheTokens) {
  Fp8Case f(Layout::kExpertMajor, ScaleFormat::kFp32, /*prequantized=*/false);
  ReceiveBuffers out = ReceiveBuffersAt(f.ranks[0].exported.data(), f.layout);
  const auto* q = static_cast<const uint8_t*>(out.recv_x);  // row 0 = rank 0 token 2
  const auto* scales = static_cast<const float*>(out.recv_scales);
  for (int h = 0; h < Fp8Case::kFp8Hidden; ++h) {
    const float v = Bf16ToFloat(f.ranks[0].x[2 * Fp8Case::kFp8Hidden + h]);
    EXPECT_NEAR(DecodeE4m3(q[h]) * scales[h / 128], v, std::fabs(v) / 16 + 1e-3f) << h;
  }
}

}  // namespace
}  // namespace epd::reference
