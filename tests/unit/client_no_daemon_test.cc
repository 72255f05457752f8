// The README's C++ snippet with no daemon running: `Connect(...).value()` must stop the
// process with the reason (UNAVAILABLE, the address), not crash on an empty StatusOr.
#include <gtest/gtest.h>
#include <unistd.h>

#include <string>

#include "client/epd/client.h"

namespace epd {
namespace {

TEST(ClientNoDaemonDeathTest, ValueOfAFailedConnectAbortsWithTheReason) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // gRPC starts threads
  const std::string address = "unix:///tmp/epd-no-daemon-" + std::to_string(getpid()) + ".sock";
  ClientOptions options;
  options.connect_timeout = std::chrono::milliseconds(200);
  EXPECT_DEATH(
      {
        auto client = Client::Connect(address, options).value();
        static_cast<void>(client);
      },
      "StatusOr::value\\(\\) on an error: NOT_FOUND: cannot connect to the epd daemon at "
      "'unix:///tmp/epd-no-daemon-.*no such socket");
}

}  // namespace
}  // namespace epd
