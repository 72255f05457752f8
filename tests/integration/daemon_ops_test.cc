// What an operator relies on, on the real binary: startup errors exit 2 before the backend
// exists, --check-config, SIGHUP re-reading the log level (and naming what it ignored), UTC
// log timestamps, and one radix (decimal) for session ids in logs and API.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <thread>

#include "epd/v1/epd.grpc.pb.h"
#include "tests/integration/daemon_process.h"

namespace epd::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr int kExitUsage = 2;

// Polls the daemon's log until it contains `text` (at most `limit`).
bool WaitForLog(const DaemonProcess& daemon, const std::string& text,
                std::chrono::milliseconds limit = std::chrono::seconds(5)) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (daemon.ReadLog().find(text) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

class DaemonOpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = "/tmp/epd-ops-XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string Write(const std::string& name, const std::string& text) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path) << text;
    return path;
  }
  std::string dir_;
};

TEST_F(DaemonOpsTest, ListenAndMetricsErrorsExit2BeforeTheBackendIsCreated) {
  std::string output;
  // backend = auto logs its choice when it creates the backend: that line must not appear.
  EXPECT_EQ(RunDaemonToExit({"--backend", "auto", "--listen", "unix://relative.sock"}, &output),
            kExitUsage);
  EXPECT_THAT(output, HasSubstr("absolute path"));
  EXPECT_THAT(output, Not(HasSubstr("backend = auto")));
  EXPECT_EQ(RunDaemonToExit({"--backend", "auto", "--listen", "unix://" + dir_ + "/e.sock",
                             "--metrics-listen", "localhost:9464"},
                            &output),
            kExitUsage);
  EXPECT_THAT(output, HasSubstr("metrics_listen = \"localhost:9464\""));
  EXPECT_THAT(output, Not(HasSubstr("backend = auto")));
}

TEST_F(DaemonOpsTest, CheckConfigValidatesWithoutStarting) {
  std::string output;
  const std::string good = Write("good.toml", "log_level = \"debug\"\ncpu_ranks = 2\n");
  EXPECT_EQ(RunDaemonToExit({"--check-config", good}, &output), 0) << output;
  EXPECT_THAT(output, HasSubstr("OK"));
  EXPECT_THAT(output, HasSubstr("log_level debug"));
  EXPECT_THAT(output, Not(HasSubstr("serving")));

  const std::string bad = Write("bad.toml", "log_level = \"debug\"\nop_timeout_ms = \"soon\"\n");
  EXPECT_EQ(RunDaemonToExit({"--check-config", bad}, &output), kExitUsage);
  EXPECT_THAT(output, HasSubstr("op_timeout_ms"));
  EXPECT_THAT(output, HasSubstr("bad.toml"));

  EXPECT_EQ(RunDaemonToExit({"--check-config", dir_ + "/absent.toml"}, &output), kExitUsage);
  EXPECT_THAT(output, HasSubstr("absent.toml"));

  // The shipped config is valid as it is.
  EXPECT_EQ(RunDaemonToExit({"--check-config", EPD_SHIPPED_CONFIG}, &output), 0) << output;
}

TEST_F(DaemonOpsTest, SighupAppliesTheLogLevelAndNamesIgnoredKeys) {
  const std::string config = Write("epd.toml", "log_level = \"info\"\n");
  auto daemon = DaemonProcess::Start({"--config", config}, 1);
  ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();

  // Lines are stamped in UTC, with the zone.
  ASSERT_TRUE(WaitForLog(**daemon, "serving on"));
  const std::string first_line = (*daemon)->ReadLog().substr(0, (*daemon)->ReadLog().find('\n'));
  EXPECT_TRUE(std::regex_search(first_line,
                                std::regex(R"(^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z )")))
      << first_line;

  Write("epd.toml", "log_level = \"debug\"\nop_timeout_ms = 1234\n");
  ASSERT_EQ(kill((*daemon)->pid(), SIGHUP), 0);
  ASSERT_TRUE(WaitForLog(**daemon, "SIGHUP: reloaded")) << (*daemon)->ReadLog();
  EXPECT_THAT((*daemon)->ReadLog(), HasSubstr("log_level = debug"));
  EXPECT_THAT((*daemon)->ReadLog(), HasSubstr("ignored until restart: op_timeout_ms"));

  // Debug lines now appear, and name the session with the id the API returned (decimal).
  auto stub = v1::Epd::NewStub(
      grpc::CreateChannel((*daemon)->address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::OpenSessionRequest open;
  open.set_client_name("sighup");
  v1::OpenSessionResponse session;
  ASSERT_TRUE(stub->OpenSession(&context, open, &session).ok());
  EXPECT_TRUE(WaitForLog(**daemon, "unary session " + std::to_string(session.session_id()) +
                                       " opened"))
      << (*daemon)->ReadLog();

  // A file that no longer parses changes nothing and keeps the daemon up.
  Write("epd.toml", "log_level = 7\n");
  ASSERT_EQ(kill((*daemon)->pid(), SIGHUP), 0);
  EXPECT_TRUE(WaitForLog(**daemon, "config not reloaded")) << (*daemon)->ReadLog();
  EXPECT_EQ((*daemon)->Stop(), 0);
}

#ifdef EPD_TEST_WITH_SYSTEMD
// Type=notify with WatchdogSec=: READY=1 comes with a STATUS= line, then WATCHDOG=1 pings
// (the daemon's workers are idle, so the liveness check passes) with the current STATUS=.
TEST_F(DaemonOpsTest, SendsStatusAndWatchdogPingsWhileLive) {
  const std::string path = dir_ + "/notify.sock";
  const int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  timeval timeout{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  auto read = [&] {
    char buffer[512];
    const ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
    return n > 0 ? std::string(buffer, static_cast<size_t>(n)) : "";
  };

  setenv("NOTIFY_SOCKET", path.c_str(), 1);  // inherited by the daemon only
  setenv("WATCHDOG_USEC", "400000", 1);      // pings every 200 ms
  auto daemon = DaemonProcess::Start({}, 1);
  unsetenv("NOTIFY_SOCKET");
  unsetenv("WATCHDOG_USEC");
  ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
  const std::string ready = read();
  EXPECT_THAT(ready, HasSubstr("READY=1"));
  EXPECT_THAT(ready, HasSubstr("STATUS=serving: 0 sessions, 0 groups"));
  for (int ping = 0; ping < 2; ++ping) {
    const std::string message = read();
    EXPECT_THAT(message, HasSubstr("WATCHDOG=1"));
    EXPECT_THAT(message, HasSubstr("STATUS=serving: "));
  }
  EXPECT_THAT((*daemon)->ReadLog(), HasSubstr("systemd watchdog: liveness pings every 200 ms"));
  EXPECT_EQ((*daemon)->Stop(), 0);
  close(fd);
}
#endif

}  // namespace
}  // namespace epd::testing
