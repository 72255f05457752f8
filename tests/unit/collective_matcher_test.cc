#include "daemon/core/collective_matcher.h"

#include <gtest/gtest.h>

#include <future>
#include <thread>

namespace epd {
namespace {

using std::chrono::milliseconds;

std::shared_ptr<CollectivePayload> Payload(CollectiveKind kind, int tag) {
  auto p = std::make_shared<CollectivePayload>();
  p->kind = kind;
  p->dispatch.x.shape = {tag};
  return p;
}

Deadline In(milliseconds ms) { return Clock::now() + ms; }

// Bounded wait until `rank` has posted its collective number `count` (its sequence moved
// past it): the observable point at which it waits in the matcher.
bool WaitUntilPosted(const CollectiveMatcher& matcher, int rank, uint64_t count) {
  const Deadline deadline = In(milliseconds(5000));
  while (matcher.next_sequence(rank) < count) {
    if (Clock::now() > deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

TEST(CollectiveMatcherTest, MatchesTheNthOpOfEveryRank) {
  CollectiveMatcher matcher("g", 3);
  std::vector<std::future<StatusOr<MatchedCollective>>> results;
  for (int r = 0; r < 3; ++r) {
    results.push_back(std::async(std::launch::async, [&, r] {
      return matcher.Arrive(r, Payload(CollectiveKind::kDispatch, r * 10), In(milliseconds(5000)));
    }));
  }
  for (auto& result : results) {
    StatusOr<MatchedCollective> matched = result.get();
    ASSERT_TRUE(matched.ok()) << matched.status().ToString();
    for (int r = 0; r < 3; ++r) EXPECT_EQ((*matched)[r]->dispatch.x.shape[0], r * 10);
  }
  EXPECT_EQ(matcher.next_sequence(1), 1u);
}

TEST(CollectiveMatcherTest, SecondOpsPairWithSecondOps) {
  CollectiveMatcher matcher("g", 2);
  auto rank1 = std::async(std::launch::async, [&] {
    auto first = matcher.Arrive(1, Payload(CollectiveKind::kDispatch, 1), In(milliseconds(5000)));
    auto second = matcher.Arrive(1, Payload(CollectiveKind::kCombine, 2), In(milliseconds(5000)));
    return std::make_pair(first.ok(), second.ok() ? (*second)[0]->dispatch.x.shape[0] : -1);
  });
  ASSERT_TRUE(
      matcher.Arrive(0, Payload(CollectiveKind::kDispatch, 10), In(milliseconds(5000))).ok());
  auto second = matcher.Arrive(0, Payload(CollectiveKind::kCombine, 20), In(milliseconds(5000)));
  ASSERT_TRUE(second.ok());
  EXPECT_EQ((*second)[1]->dispatch.x.shape[0], 2);
  auto [first_ok, rank1_saw] = rank1.get();
  EXPECT_TRUE(first_ok);
  EXPECT_EQ(rank1_saw, 20);
}

TEST(CollectiveMatcherTest, TimesOutNamingTheMissingRanksAndFailsLateArrivals) {
  CollectiveMatcher matcher("g", 3);
  auto start = Clock::now();
  auto result = matcher.Arrive(0, Payload(CollectiveKind::kDispatch, 0), In(milliseconds(50)));
  EXPECT_LT(Clock::now() - start, milliseconds(2000));
  EXPECT_EQ(result.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(result.status().message().find("group ranks [1, 2]"), std::string::npos)
      << result.status().message();
  // A rank arriving after the timeout gets the same failure immediately, keeping sequences
  // aligned for the next op.
  auto late = matcher.Arrive(1, Payload(CollectiveKind::kDispatch, 1), In(milliseconds(5000)));
  EXPECT_EQ(late.status().code(), StatusCode::kDeadlineExceeded);
}

TEST(CollectiveMatcherTest, MismatchedKindsFailBothRanks) {
  CollectiveMatcher matcher("g", 2);
  auto rank0 = std::async(std::launch::async, [&] {
    return matcher.Arrive(0, Payload(CollectiveKind::kDispatch, 0), In(milliseconds(5000)));
  });
  ASSERT_TRUE(WaitUntilPosted(matcher, 0, 1));
  auto rank1 = matcher.Arrive(1, Payload(CollectiveKind::kCombine, 1), In(milliseconds(5000)));
  EXPECT_EQ(rank1.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(rank0.get().status().code(), StatusCode::kFailedPrecondition);
}

TEST(CollectiveMatcherTest, AbortWakesWaitersAndRealignsSequences) {
  CollectiveMatcher matcher("g", 2);
  auto rank0 = std::async(std::launch::async, [&] {
    return matcher.Arrive(0, Payload(CollectiveKind::kDispatch, 0), In(milliseconds(10000)));
  });
  ASSERT_TRUE(WaitUntilPosted(matcher, 0, 1));
  auto start = Clock::now();
  matcher.Abort(UnavailableError("rank 1's session ended"));
  auto aborted = rank0.get();
  EXPECT_LT(Clock::now() - start, milliseconds(2000));
  EXPECT_EQ(aborted.status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(matcher.next_sequence(0), matcher.next_sequence(1));
  // The group works again afterwards.
  auto again0 = std::async(std::launch::async, [&] {
    return matcher.Arrive(0, Payload(CollectiveKind::kDispatch, 0), In(milliseconds(5000)));
  });
  EXPECT_TRUE(
      matcher.Arrive(1, Payload(CollectiveKind::kDispatch, 1), In(milliseconds(5000))).ok());
  EXPECT_TRUE(again0.get().ok());
}

}  // namespace
}  // namespace epd
