#include "tests/bench/watchdog.h"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

namespace epd::bench {
namespace {

using std::chrono::milliseconds;

TEST(WatchdogDeathTest, EndsAStuckProcessNamingTheStep) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // the child starts a thread
  EXPECT_EXIT(
      {
        Watchdog watchdog("watchdog-test", milliseconds(200));
        watchdog.Phase("waiting on a flag nobody writes");
        while (true) std::this_thread::sleep_for(milliseconds(10));
      },
      testing::ExitedWithCode(kWatchdogExitCode),
      "watchdog-test: no result within 0 s; stuck in: waiting on a flag nobody writes");
}

TEST(WatchdogTest, DisarmedBeforeTheLimitLetsTheProcessGoOn) {
  const auto start = std::chrono::steady_clock::now();
  {
    Watchdog watchdog("watchdog-test", milliseconds(60'000));
    watchdog.Phase("a step that finishes");
  }
  // The destructor wakes the thread at once rather than waiting out the limit.
  EXPECT_LT(std::chrono::steady_clock::now() - start, milliseconds(5'000));
}

}  // namespace
}  // namespace epd::bench
