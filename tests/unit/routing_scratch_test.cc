// The chunked routing bind's geometry (kernels/routing_scratch.h): the daemon sizes a handle's
// scratch with it once and the launcher checks each n against it, so it must cover every n
// up to T and switch to chunks only where scratch exists.
#include "kernels/routing_scratch.h"

#include <gtest/gtest.h>

#include <cstdint>

#include "common/limits.h"

namespace epd::kernels {
namespace {

TEST(RoutingScratchTest, ChunksCoverEveryTokenOnce) {
  EXPECT_EQ(RoutingChunks(0), 0);
  EXPECT_EQ(RoutingChunks(1), 1);
  EXPECT_EQ(RoutingChunks(kRoutingChunkTokens - 1), 1);
  EXPECT_EQ(RoutingChunks(kRoutingChunkTokens), 1);
  EXPECT_EQ(RoutingChunks(kRoutingChunkTokens + 1), 2);
  EXPECT_EQ(RoutingChunks(4096), 4096 / kRoutingChunkTokens);
}

TEST(RoutingScratchTest, LayoutPlacesCountsThenErrorsThenTheFlag) {
  const RoutingScratchLayout ll = ComputeRoutingScratch(1000, 256, 8, false);
  EXPECT_EQ(ll.chunks, 32);  // 1000 tokens: 31 full chunks and one of 8
  EXPECT_EQ(ll.columns, 256);
  EXPECT_EQ(ll.counts, 0u);
  EXPECT_EQ(ll.bad_id, 32u * 256 * 4);
  EXPECT_EQ(ll.bad_weight, ll.bad_id + 32 * 4);
  EXPECT_EQ(ll.rejected, ll.bad_weight + 32 * 4);
  EXPECT_EQ(ll.bytes, ll.rejected + 4);

  // High-throughput adds a column per destination rank.
  const RoutingScratchLayout ht = ComputeRoutingScratch(1000, 256, 8, true);
  EXPECT_EQ(ht.columns, 264);
  EXPECT_EQ(ht.bad_id, 32u * 264 * 4);
  EXPECT_EQ(ht.bytes, ht.bad_id + 2 * 32 * 4 + 4);
}

TEST(RoutingScratchTest, HandleScratchFitsEveryChunkedUpdateUpToT) {
  for (bool high_throughput : {false, true}) {
    for (int T : {kRoutingChunkedMinTokens, 1000, 4096, 8192}) {
      const size_t bytes = RoutingScratchBytes(T, 256, 8, high_throughput);
      ASSERT_GT(bytes, 0u) << T;
      for (int n = 0; n <= T; ++n) {
        ASSERT_LE(ComputeRoutingScratch(n, 256, 8, high_throughput).bytes, bytes) << n;
        ASSERT_EQ(UseChunkedRouting(n, 256, 8, high_throughput, bytes),
                  n >= RoutingChunkedFrom(high_throughput, 0))
            << "T " << T << " n " << n;
        ASSERT_EQ(UseChunkedRouting(n, 256, 8, high_throughput, bytes, kRoutingChunkedMinTokens),
                  n >= kRoutingChunkedMinTokens)
            << "T " << T << " n " << n;
      }
      EXPECT_FALSE(UseChunkedRouting(T + 32, 256, 8, high_throughput, bytes));
    }
  }
  // The largest group stays within size_t arithmetic and int32 chunk counts.
  EXPECT_EQ(RoutingScratchBytes(kMaxTokensPerRank, kMaxExperts, kMaxRanks, true),
            (size_t{2048} * (kMaxExperts + kMaxRanks) + 2 * 2048 + 1) * 4);
}

TEST(RoutingScratchTest, ChunkedFromDefaultsPerAlgorithmAndNeverGoesBelowTheMinimum) {
  EXPECT_EQ(RoutingChunkedFrom(false, 0), kRoutingChunkedFasterFromTokens);
  EXPECT_EQ(RoutingChunkedFrom(true, 0), kRoutingChunkedFasterFromTokensHighThroughput);
  EXPECT_EQ(RoutingChunkedFrom(false, 300), 300);
  EXPECT_EQ(RoutingChunkedFrom(true, 1), kRoutingChunkedMinTokens);
  EXPECT_GE(kRoutingChunkedFasterFromTokensHighThroughput, kRoutingChunkedMinTokens);
}

TEST(RoutingScratchTest, SmallGroupsGetNoScratchAndStaySingleBlock) {
  const int T = kRoutingChunkedMinTokens - 1;
  EXPECT_EQ(RoutingScratchBytes(T, 256, 8, false), 0u);
  EXPECT_EQ(RoutingScratchBytes(T, 256, 8, true), 0u);
  for (int n = 0; n <= T; ++n) EXPECT_FALSE(UseChunkedRouting(n, 256, 8, false, 0));
  // No scratch (a frontend of a daemon that exports none): single block for every n.
  EXPECT_FALSE(UseChunkedRouting(8192, 256, 8, false, 0));
}

}  // namespace
}  // namespace epd::kernels
