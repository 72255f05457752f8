// HostRendezvous: the cpu backend's meeting point of a collective op's ranks.
#include "daemon/backends/cpu/host_rendezvous.h"

#include <gtest/gtest.h>

#include <future>
#include <thread>

namespace epd {
namespace {

using std::chrono::milliseconds;
constexpr milliseconds kLong{10'000};

// Ranks 0 and 1 of a two-rank rendezvous both arrive at their next op: each may now read the
// other's part. Returns the op's number.
uint64_t MeetBoth(HostRendezvous& rendezvous) {
  const uint64_t seq = rendezvous.TakeSequence(0);
  EXPECT_EQ(rendezvous.TakeSequence(1), seq);
  auto other = std::async(std::launch::async, [&] {
    return rendezvous.Arrive(1, seq, CollectiveKind::kDispatch, nullptr, kLong);
  });
  EXPECT_TRUE(rendezvous.Arrive(0, seq, CollectiveKind::kDispatch, nullptr, kLong).ok());
  EXPECT_TRUE(other.get().ok());
  return seq;
}

TEST(HostRendezvous, RanksMeetAndSeeEachOthersParts) {
  HostRendezvous rendezvous("g", 2);
  int a = 1, b = 2;
  const uint64_t s0 = rendezvous.TakeSequence(0), s1 = rendezvous.TakeSequence(1);
  ASSERT_EQ(s0, s1);
  auto other = std::async(std::launch::async, [&] {
    return rendezvous.Arrive(1, s1, CollectiveKind::kDispatch, &b, kLong);
  });
  auto mine = rendezvous.Arrive(0, s0, CollectiveKind::kDispatch, &a, kLong);
  ASSERT_TRUE(mine.ok()) << mine.status().ToString();
  EXPECT_EQ((*mine)[0], &a);
  EXPECT_EQ((*mine)[1], &b);
  ASSERT_TRUE(other.get().ok());
  auto left = std::async(std::launch::async, [&] { return rendezvous.Leave(1, s1, kLong); });
  EXPECT_TRUE(rendezvous.Leave(0, s0, kLong).ok());
  EXPECT_TRUE(left.get().ok());
}

TEST(HostRendezvous, ATimeoutNamesTheMissingRankAndTheNextOpWorks) {
  HostRendezvous rendezvous("g", 3);
  const uint64_t seq = rendezvous.TakeSequence(0);
  rendezvous.TakeSequence(1);
  auto peer = std::async(std::launch::async, [&] {
    return rendezvous.Arrive(1, seq, CollectiveKind::kCombine, nullptr, kLong);
  });
  auto timed_out = rendezvous.Arrive(0, seq, CollectiveKind::kCombine, nullptr, milliseconds(100));
  EXPECT_EQ(timed_out.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(timed_out.status().message().find("group ranks [2] did not post it"), std::string::npos)
      << timed_out.status().message();
  EXPECT_EQ(peer.get().status().code(), StatusCode::kDeadlineExceeded);
  // The late rank takes the failed number and fails at once.
  const uint64_t late = rendezvous.TakeSequence(2);
  EXPECT_EQ(rendezvous.Arrive(2, late, CollectiveKind::kCombine, nullptr, kLong).status().code(),
            StatusCode::kDeadlineExceeded);
  // Then the group works again.
  std::vector<std::future<Status>> ranks;
  for (int r = 0; r < 3; ++r) {
    ranks.push_back(std::async(std::launch::async, [&, r] {
      const uint64_t next = rendezvous.TakeSequence(r);
      EPD_RETURN_IF_ERROR(
          rendezvous.Arrive(r, next, CollectiveKind::kDispatch, nullptr, kLong).status());
      return rendezvous.Leave(r, next, kLong);
    }));
  }
  for (auto& rank : ranks) EXPECT_TRUE(rank.get().ok());
}

TEST(HostRendezvous, AnAbandonedOpFailsThePeersAtOnceWithTheReason) {
  HostRendezvous rendezvous("g", 2);
  const uint64_t seq = rendezvous.TakeSequence(0);
  auto waiting = std::async(std::launch::async, [&] {
    return rendezvous.Arrive(0, seq, CollectiveKind::kDispatch, nullptr, kLong);
  });
  rendezvous.Abandon(1, rendezvous.TakeSequence(1), CollectiveKind::kDispatch,
                     FailedPreconditionError("no routing"));
  ASSERT_EQ(waiting.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  const Status status = waiting.get().status();
  EXPECT_EQ(status.code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(status.message(), "group 'g' dispatch op 1: group rank 1: no routing");
}

TEST(HostRendezvous, AbortReleasesEveryWaitAndRealignsTheRanks) {
  HostRendezvous rendezvous("g", 2);
  // Rank 0 is two ops ahead of rank 1 (whose session ends).
  const uint64_t first = rendezvous.TakeSequence(0);
  auto waiting = std::async(std::launch::async, [&] {
    return rendezvous.Arrive(0, first, CollectiveKind::kDispatch, nullptr, kLong);
  });
  const uint64_t queued = rendezvous.TakeSequence(0);
  rendezvous.Abort(UnavailableError("rank 1's session ended"));
  ASSERT_EQ(waiting.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  EXPECT_EQ(waiting.get().status().message(), "rank 1's session ended");
  // An op numbered before the abort fails when it reaches the rendezvous, without waiting.
  EXPECT_EQ(rendezvous.Arrive(0, queued, CollectiveKind::kCombine, nullptr, kLong).status().code(),
            StatusCode::kUnavailable);
  // Both ranks' next ops are the same op again.
  EXPECT_EQ(rendezvous.TakeSequence(0), rendezvous.TakeSequence(1));
}

// A rank's op ending lets its memory go (its session's buffers are unmapped then): while a peer
// still reads it, the rank stays — an abort or a shutdown does not change that. Nor does either
// fail the op: every rank's work on it is done (a peer whose part was answered may end its
// session at once without failing the ranks still finishing theirs).
TEST(HostRendezvous, NoRankLeavesAMetOpWhileAPeerStillReadsAndALaterAbortFailsNeither) {
  for (const bool shut_down : {false, true}) {
    SCOPED_TRACE(shut_down ? "shutdown" : "abort");
    HostRendezvous rendezvous("g", 2);
    const uint64_t seq = MeetBoth(rendezvous);
    if (shut_down) {
      rendezvous.Shutdown();
    } else {
      rendezvous.Abort(UnavailableError("rank 1's session ended"));
    }
    auto leaving = std::async(std::launch::async, [&] { return rendezvous.Leave(0, seq, kLong); });
    EXPECT_EQ(leaving.wait_for(milliseconds(300)), std::future_status::timeout);
    EXPECT_TRUE(rendezvous.Leave(1, seq, kLong).ok());
    EXPECT_TRUE(leaving.get().ok());
    // The ops after it are failed (or, after an abort, realigned and working again).
    const uint64_t next = rendezvous.TakeSequence(0);
    if (shut_down) {
      EXPECT_EQ(
          rendezvous.Arrive(0, next, CollectiveKind::kCombine, nullptr, kLong).status().code(),
          StatusCode::kUnavailable);
    } else {
      EXPECT_EQ(rendezvous.TakeSequence(1), next);
    }
  }
}

TEST(HostRendezvous, ALeaveTimeoutNamesTheReadersAndStillWaitsForThem) {
  HostRendezvous rendezvous("g", 2);
  const uint64_t seq = MeetBoth(rendezvous);
  auto leaving =
      std::async(std::launch::async, [&] { return rendezvous.Leave(0, seq, milliseconds(100)); });
  EXPECT_EQ(leaving.wait_for(milliseconds(500)), std::future_status::timeout);
  const Status slow = rendezvous.Leave(1, seq, kLong);
  const Status timed_out = leaving.get();
  EXPECT_EQ(timed_out.code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(timed_out.message().find("group rank 0 timed out after 100 ms waiting for group ranks "
                                     "[1] to finish reading its memory"),
            std::string::npos)
      << timed_out.message();
  EXPECT_EQ(slow.message(), timed_out.message());
  // The group's next op works.
  const uint64_t next = MeetBoth(rendezvous);
  auto other = std::async(std::launch::async, [&] { return rendezvous.Leave(1, next, kLong); });
  EXPECT_TRUE(rendezvous.Leave(0, next, kLong).ok());
  EXPECT_TRUE(other.get().ok());
}

TEST(HostRendezvous, ShutdownReleasesWaitsAndFailsLaterOnes) {
  HostRendezvous rendezvous("g", 2);
  const uint64_t seq = rendezvous.TakeSequence(0);
  auto waiting = std::async(std::launch::async, [&] {
    return rendezvous.Arrive(0, seq, CollectiveKind::kDispatch, nullptr, kLong);
  });
  rendezvous.Shutdown();
  ASSERT_EQ(waiting.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  EXPECT_EQ(waiting.get().status().code(), StatusCode::kUnavailable);
  const uint64_t next = rendezvous.TakeSequence(1);
  EXPECT_EQ(rendezvous.Arrive(1, next, CollectiveKind::kDispatch, nullptr, kLong).status().code(),
            StatusCode::kUnavailable);
}

}  // namespace
}  // namespace epd
