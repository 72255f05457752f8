// Logging helpers: which stream counts as the journal, the op-failure rate limit, and the
// busy clock the watchdog's liveness probe reads.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "daemon/core/busy_clock.h"
#include "daemon/core/log.h"
#include "daemon/core/log_rate_limiter.h"

namespace epd {
namespace {

TEST(LogTest, JournalStreamMustNameTheFileOnTheFd) {
  std::FILE* file = std::tmpfile();
  ASSERT_NE(file, nullptr);
  const int fd = fileno(file);
  struct stat st {};
  ASSERT_EQ(fstat(fd, &st), 0);
  const std::string same = std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
  const std::string other = std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino + 1);
  EXPECT_TRUE(log::StreamIsJournal(same.c_str(), fd));
  EXPECT_FALSE(log::StreamIsJournal(other.c_str(), fd)) << "stderr was redirected elsewhere";
  EXPECT_FALSE(log::StreamIsJournal(nullptr, fd));
  EXPECT_FALSE(log::StreamIsJournal("garbage", fd));
  std::fclose(file);
}

TEST(LogTest, SetLevelAcceptsKnownNamesOnly) {
  EXPECT_TRUE(log::SetLevel("debug"));
  EXPECT_EQ(log::LevelName(), "debug");
  EXPECT_FALSE(log::SetLevel("loud"));
  EXPECT_EQ(log::LevelName(), "debug");
  EXPECT_TRUE(log::SetLevel("info"));
}

TEST(LogRateLimiterTest, PassesABurstPerPeriodAndCountsTheRest) {
  using namespace std::chrono_literals;
  LogRateLimiter limiter(2, 10s);
  const auto t0 = LogRateLimiter::Clock::now();
  uint64_t suppressed = 99;
  EXPECT_TRUE(limiter.Allow(&suppressed, t0));
  EXPECT_EQ(suppressed, 0u);
  EXPECT_TRUE(limiter.Allow(&suppressed, t0 + 1s));
  EXPECT_FALSE(limiter.Allow(&suppressed, t0 + 2s));
  EXPECT_FALSE(limiter.Allow(&suppressed, t0 + 9s));
  // A new period: the first line passes and reports the two held back.
  EXPECT_TRUE(limiter.Allow(&suppressed, t0 + 11s));
  EXPECT_EQ(suppressed, 2u);
  EXPECT_TRUE(limiter.Allow(&suppressed, t0 + 12s));
  EXPECT_EQ(suppressed, 0u);
}

TEST(BusyClockTest, IdleIsZeroAndBusyGrows) {
  using namespace std::chrono_literals;
  BusyClock clock;
  const auto t0 = BusyClock::Clock::now();
  EXPECT_EQ(clock.BusyFor(t0), BusyClock::Clock::duration::zero());
  clock.Begin(t0);
  EXPECT_EQ(clock.BusyFor(t0 + 3s), 3s);
  clock.End();
  EXPECT_EQ(clock.BusyFor(t0 + 5s), BusyClock::Clock::duration::zero());
}

}  // namespace
}  // namespace epd
