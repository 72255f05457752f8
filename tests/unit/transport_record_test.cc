#include "daemon/core/transport_record.h"

#include <gtest/gtest.h>

namespace epd {
namespace {

TEST(TransportRecordTest, StartsUnformedForEveryHostedRankInOrder) {
  TransportRecord record({5, 4});
  const auto state = record.State();
  ASSERT_EQ(state.size(), 2u);
  EXPECT_EQ(state[0].group_rank, 4);
  EXPECT_EQ(state[1].group_rank, 5);
  for (const RankTransportState& rank : state) {
    EXPECT_FALSE(rank.formed);
    EXPECT_EQ(rank.generation, -1);
    EXPECT_EQ(rank.formations, 0u);
    EXPECT_EQ(rank.failures, 0u);
    EXPECT_TRUE(rank.last_failure.empty());
  }
}

TEST(TransportRecordTest, CountsFormationsOncePerGenerationAndKeepsTheLastFailure) {
  TransportRecord record({2, 3});
  record.Formed(2, 0);
  record.Formed(2, 0);  // the same communicator reported again is no new formation
  auto rank = record.State()[0];
  EXPECT_TRUE(rank.formed);
  EXPECT_EQ(rank.generation, 0);
  EXPECT_EQ(rank.formations, 1u);
  EXPECT_FALSE(record.State()[1].formed) << "another rank's formation is its own";

  const auto before = std::chrono::system_clock::now();
  record.Failed(2, UnavailableError("group 'g': node 1 is down"));
  const auto after = std::chrono::system_clock::now();
  rank = record.State()[0];
  EXPECT_FALSE(rank.formed);
  EXPECT_EQ(rank.generation, 0) << "the last formed generation stays shown";
  EXPECT_EQ(rank.failures, 1u);
  EXPECT_EQ(rank.last_failure, "group 'g': node 1 is down");
  EXPECT_GE(rank.last_failure_at, before);
  EXPECT_LE(rank.last_failure_at, after);

  record.Formed(2, 1);
  rank = record.State()[0];
  EXPECT_TRUE(rank.formed);
  EXPECT_EQ(rank.generation, 1);
  EXPECT_EQ(rank.formations, 2u);
  EXPECT_EQ(rank.last_failure, "group 'g': node 1 is down") << "a re-formation keeps the history";

  record.Formed(7, 3);  // not hosted here: ignored
  record.Failed(7, UnavailableError("x"));
  EXPECT_EQ(record.State().size(), 2u);
}

TEST(TransportRecordTest, AllVariantsApplyToEveryHostedRank) {
  TransportRecord record({0, 1});
  record.FormedAll(4);
  for (const RankTransportState& rank : record.State()) {
    EXPECT_TRUE(rank.formed);
    EXPECT_EQ(rank.generation, 4);
    EXPECT_EQ(rank.formations, 1u);
  }
  record.FailedAll(DeadlineExceededError("timed out"));
  for (const RankTransportState& rank : record.State()) {
    EXPECT_FALSE(rank.formed);
    EXPECT_EQ(rank.failures, 1u);
    EXPECT_EQ(rank.last_failure, "timed out");
  }
}

}  // namespace
}  // namespace epd
