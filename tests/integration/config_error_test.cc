// The daemon's startup and shutdown contract, on the real binary: a malformed or
// contradictory config file or flag makes `epd` exit 2 with a message naming the key; a good
// config's persistent groups exist once it serves; SIGTERM / SIGINT drain and exit 0 quickly,
// even with streams open.
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "epd/v1/epd.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "tests/integration/daemon_process.h"
#include "tests/integration/client_test_support.h"
#include "tests/loopback_port.h"

namespace epd::testing {
namespace {

using ::testing::HasSubstr;
using SteadyClock = std::chrono::steady_clock;

constexpr int kExitUsage = 2;
constexpr auto kPromptExit = std::chrono::seconds(3);

// A scratch directory with one config file; the daemon never listens outside of it.
class ConfigErrorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = "/tmp/epd-config-XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    config_path_ = dir_ + "/bad.toml";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Runs `epd --config <text> --listen <scratch socket> extra...` expecting exit 2.
  std::string ExpectRejected(const std::string& toml, std::vector<std::string> extra = {}) {
    std::ofstream(config_path_) << toml;
    // No /metrics: a daemon of a parallel test holding its port would fail this one first.
    std::vector<std::string> args = {"--config", config_path_, "--listen",
                                     "unix://" + dir_ + "/epd.sock", "--metrics-listen", ""};
    args.insert(args.end(), extra.begin(), extra.end());
    std::string output;
    EXPECT_EQ(RunDaemonToExit(args, &output, 5'000), kExitUsage) << "config:\n"
                                                                 << toml << "\noutput:\n"
                                                                 << output;
    return output;
  }

  std::string dir_;
  std::string config_path_;
};

TEST_F(ConfigErrorTest, UnknownKeyIsNamed) {
  EXPECT_THAT(ExpectRejected("listne = \"unix:///tmp/x.sock\"\n"), HasSubstr("listne"));
}

TEST_F(ConfigErrorTest, SyntaxErrorNamesFileAndLine) {
  EXPECT_THAT(ExpectRejected("backend = \"cpu\"\ncpu_ranks = = 2\n"),
              HasSubstr(config_path_ + ":2"));
}

TEST_F(ConfigErrorTest, WrongTypeIsNamed) {
  const std::string output = ExpectRejected("gpus = \"0,1\"\n");
  EXPECT_THAT(output, HasSubstr("gpus"));
  EXPECT_THAT(output, HasSubstr("array"));
}

TEST_F(ConfigErrorTest, NonLoopbackTcpIsRefused) {
  EXPECT_THAT(ExpectRejected("tcp_listen = \"0.0.0.0:50051\"\n"), HasSubstr("tcp_listen"));
}

TEST_F(ConfigErrorTest, NonPositiveCpuRanksIsRefused) {
  EXPECT_THAT(ExpectRejected("backend = \"cpu\"\ncpu_ranks = 0\n"), HasSubstr("cpu_ranks"));
}

const char* kGroup = R"(
[[group]]
name = "moe"
world_size = 2
experts = 4
hidden = 64
max_tokens_per_rank = 8
top_k = 2
)";

TEST_F(ConfigErrorTest, DuplicateGroupNameIsRefused) {
  EXPECT_THAT(ExpectRejected(std::string(kGroup) + kGroup), HasSubstr("group[1].name"));
}

TEST_F(ConfigErrorTest, ExpertsNotMultipleOfWorldSizeIsRefused) {
  const std::string output = ExpectRejected(R"(
[[group]]
name = "moe"
world_size = 2
experts = 5
hidden = 64
max_tokens_per_rank = 8
top_k = 2
)");
  EXPECT_THAT(output, HasSubstr("group[0]"));
  EXPECT_THAT(output, HasSubstr("experts"));
}

TEST_F(ConfigErrorTest, GroupRanksBeyondTheNodeAreRefused) {
  // Parses, but the node has only 2 cpu ranks.
  const std::string output = ExpectRejected(R"(
backend = "cpu"
cpu_ranks = 2
[[group]]
name = "moe"
ranks = [0, 3]
experts = 4
hidden = 64
max_tokens_per_rank = 8
top_k = 2
)");
  EXPECT_THAT(output, HasSubstr("group[0]"));
  EXPECT_THAT(output, HasSubstr("rank 3"));
}

TEST_F(ConfigErrorTest, HandleOnNonMemberRankIsRefused) {
  EXPECT_THAT(
      ExpectRejected(std::string(kGroup) + "[[group.handle]]\nname = \"l0\"\nranks = [7]\n"),
      HasSubstr("group[0].handle[0].ranks"));
}

TEST_F(ConfigErrorTest, MissingConfigFileIsNamed) {
  std::string output;
  EXPECT_EQ(RunDaemonToExit({"--config", dir_ + "/absent.toml"}, &output, 5'000), kExitUsage);
  EXPECT_THAT(output, HasSubstr("absent.toml"));
}

TEST_F(ConfigErrorTest, BadFlagsAreNamed) {
  std::string output;
  EXPECT_EQ(RunDaemonToExit({"--cpu-ranks", "0"}, &output, 5'000), kExitUsage);
  EXPECT_THAT(output, HasSubstr("--cpu-ranks"));
  EXPECT_EQ(RunDaemonToExit({"--backend", "tpu"}, &output, 5'000), kExitUsage);
  EXPECT_THAT(output, HasSubstr("--backend"));
  EXPECT_EQ(RunDaemonToExit({"--no-such-flag"}, &output, 5'000), kExitUsage);
  EXPECT_THAT(output, HasSubstr("--no-such-flag"));
  // Flags are validated like the file: a flag cannot open TCP beyond loopback either.
  EXPECT_EQ(RunDaemonToExit({"--backend", "cpu", "--listen", "unix://" + dir_ + "/epd.sock",
                             "--metrics-listen", "", "--tcp-listen", "0.0.0.0:1"},
                            &output, 5'000),
            kExitUsage);
  EXPECT_THAT(output, HasSubstr("tcp_listen"));
}

TEST_F(ConfigErrorTest, FlagOverridesConfigFile) {
  // The file's bad listen address is never used because the flag replaces it.
  std::ofstream(config_path_) << "listen = \"unix:///proc/epd-cannot-live-here.sock\"\n";
  auto daemon = DaemonProcess::Start({"--config", config_path_}, 1);
  ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
  EXPECT_EQ((*daemon)->Stop(), 0);
}

TEST(DaemonLifecycleTest, VersionFlag) {
  std::string output;
  EXPECT_EQ(RunDaemonToExit({"--version"}, &output, 5'000), 0);
  EXPECT_THAT(output, HasSubstr("epd "));
}

TEST(DaemonLifecycleTest, PersistentGroupsAndHandlesFromConfigExist) {
  std::string pattern = "/tmp/epd-config-XXXXXX";
  ASSERT_NE(mkdtemp(pattern.data()), nullptr);
  const std::string path = pattern + "/epd.toml";
  std::ofstream(path) << kGroup << "[[group.handle]]\nname = \"layer0\"\n"
                      << "[[group.handle]]\nname = \"layer1\"\nranks = [1]\n";
  auto daemon = DaemonProcess::Start({"--config", path}, 2);
  ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();

  auto stub = v1::Epd::NewStub(
      grpc::CreateChannel((*daemon)->address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  v1::ListGroupsResponse groups;
  ASSERT_TRUE(stub->ListGroups(&context, v1::ListGroupsRequest(), &groups).ok());
  ASSERT_EQ(groups.groups_size(), 1);
  const auto& group = groups.groups(0);
  EXPECT_EQ(group.config().name(), "moe");
  EXPECT_TRUE(group.persistent());
  EXPECT_EQ(group.config().world_size(), 2);
  EXPECT_EQ(group.config().experts(), 4);
  EXPECT_EQ(group.config().dtype(), v1::DTYPE_BF16);  // the default
  EXPECT_EQ(group.handles(), 3);                      // layer0 on ranks 0 and 1, layer1 on rank 1
  EXPECT_EQ((*daemon)->Stop(), 0) << (*daemon)->ReadLog();
  std::filesystem::remove_all(pattern);
}

// Exits 0 within kPromptExit after `signal`, with a Session stream open on rank 0.
void ExpectPromptExitWithOpenStream(int signal_number) {
  auto daemon = DaemonProcess::Start({}, 2);
  ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
  auto stub = v1::Epd::NewStub(
      grpc::CreateChannel((*daemon)->address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  auto stream = stub->Session(&context);
  v1::SessionRequest open;
  open.set_request_id(1);
  open.mutable_open()->set_rank(0);
  open.mutable_open()->set_client_name("lifecycle-test");
  ASSERT_TRUE(stream->Write(open));
  v1::SessionResponse opened;
  ASSERT_TRUE(stream->Read(&opened));
  EXPECT_EQ(opened.request_id(), 1u);
  EXPECT_EQ(opened.code(), 0) << opened.message();
  EXPECT_NE(opened.opened().session_id(), 0u);

  const auto start = SteadyClock::now();
  ASSERT_EQ(kill((*daemon)->pid(), signal_number), 0);
  v1::SessionResponse ignored;
  while (stream->Read(&ignored)) {
  }
  const grpc::Status ended = stream->Finish();
  EXPECT_EQ(ended.error_code(), grpc::StatusCode::UNAVAILABLE) << ended.error_message();
  EXPECT_EQ((*daemon)->Stop(), 0) << (*daemon)->ReadLog();  // reaps; already exiting
  EXPECT_LT(SteadyClock::now() - start, kPromptExit);
}

// The socket: its directory is created, its mode is 0660, a stale one left by a killed
// daemon is replaced, and a live daemon's socket is never taken over.
TEST(DaemonLifecycleTest, SocketIsCreatedProtectedAndNotStolen) {
  std::string pattern = "/tmp/epd-socket-XXXXXX";
  ASSERT_NE(mkdtemp(pattern.data()), nullptr);
  const std::string path = pattern + "/run/epd/epd.sock";  // directories do not exist yet
  const std::string address = "unix://" + path;
  auto first = DaemonProcess::Start({"--listen", address}, 1);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0660u);

  std::string output;
  EXPECT_EQ(RunDaemonToExit({"--backend", "cpu", "--listen", address, "--metrics-listen", ""},
                            &output, 5'000),
            1);
  EXPECT_THAT(output, HasSubstr("already serves"));

  (*first)->Kill();  // leaves the socket file behind
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  auto second = DaemonProcess::Start({"--listen", address}, 1);
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_EQ((*second)->Stop(), 0);
  EXPECT_NE(stat(path.c_str(), &st), 0) << "a clean stop removes the socket";
  std::filesystem::remove_all(pattern);
}

grpc::health::v1::HealthCheckResponse::ServingStatus CheckHealth(
    grpc::health::v1::Health::Stub& health) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  grpc::health::v1::HealthCheckResponse response;
  if (!health.Check(&context, grpc::health::v1::HealthCheckRequest(), &response).ok()) {
    return grpc::health::v1::HealthCheckResponse::UNKNOWN;
  }
  return response.status();
}

// While SIGTERM drains an op still in flight (here: waiting on a fence nobody signals),
// health reports NOT_SERVING and new sessions are refused UNAVAILABLE; when the drain gives
// up on the op, its call is answered UNAVAILABLE and the daemon still exits 0, promptly.
TEST(DaemonLifecycleTest, DrainReportsNotServingAndRefusesNewWork) {
  constexpr int kDrainMs = 1'500;
  auto daemon = DaemonProcess::Start(
      {"--drain-timeout-ms", std::to_string(kDrainMs), "--op-timeout-ms", "30000"}, 1);
  ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
  auto channel = grpc::CreateChannel((*daemon)->address(), grpc::InsecureChannelCredentials());
  auto stub = v1::Epd::NewStub(channel);
  auto health = grpc::health::v1::Health::NewStub(channel);
  std::string secret;  // the session's, once open: a hand-made client sends it on every call
  auto call = [&secret](auto method) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    if (!secret.empty()) context.AddMetadata("epd-session-secret", secret);
    return method(&context);
  };

  v1::OpenSessionRequest open;
  open.set_rank(0);
  v1::OpenSessionResponse session;
  ASSERT_TRUE(call([&](auto* c) { return stub->OpenSession(c, open, &session); }).ok());
  secret = session.session_secret();
  v1::CreateGroupRequest group;
  group.set_session_id(session.session_id());
  group.mutable_config()->set_name("drain");
  group.mutable_config()->set_world_size(1);
  group.mutable_config()->set_experts(2);
  group.mutable_config()->set_hidden(8);
  group.mutable_config()->set_max_tokens_per_rank(4);
  group.mutable_config()->set_top_k(1);
  v1::CreateGroupResponse created;
  ASSERT_TRUE(call([&](auto* c) { return stub->CreateGroup(c, group, &created); }).ok());
  v1::CreateHandleRequest create_handle;
  create_handle.set_session_id(session.session_id());
  create_handle.set_group("drain");
  v1::HandleInfo handle;
  ASSERT_TRUE(call([&](auto* c) { return stub->CreateHandle(c, create_handle, &handle); }).ok());
  v1::CreateFenceRequest create_fence;
  create_fence.set_session_id(session.session_id());
  v1::CreateFenceResponse fence;
  ASSERT_TRUE(call([&](auto* c) { return stub->CreateFence(c, create_fence, &fence); }).ok());

  // Routing in the handle's own exported buffer (zeros: expert 0), bound after a fence wait
  // that never completes, so the op stays in flight.
  v1::UpdateHandleRequest update;
  update.set_session_id(session.session_id());
  update.set_handle_id(handle.handle_id());
  update.mutable_topk_idx()->set_buffer_id(handle.buffer_id());
  update.mutable_topk_idx()->set_dtype(v1::DTYPE_INT32);
  update.mutable_topk_idx()->add_shape(1);
  update.mutable_topk_idx()->add_shape(1);
  update.mutable_options()->mutable_wait()->set_fence_id(fence.fence_id());
  update.mutable_options()->mutable_wait()->set_value(1);
  update.mutable_options()->set_blocking(true);  // answered once the stream passed it
  v1::OpResponse ignored;
  grpc::Status abandoned;
  std::thread pending(
      [&] { abandoned = call([&](auto* c) { return stub->UpdateHandle(c, update, &ignored); }); });
  ASSERT_EQ(WaitForOpsRunning(*stub, session.session_id(), 1), 1);
  ASSERT_EQ(CheckHealth(*health), grpc::health::v1::HealthCheckResponse::SERVING);

  const auto start = SteadyClock::now();
  ASSERT_EQ(kill((*daemon)->pid(), SIGTERM), 0);
  bool saw_not_serving = false;
  while (SteadyClock::now() - start < std::chrono::milliseconds(kDrainMs - 300)) {
    if (CheckHealth(*health) == grpc::health::v1::HealthCheckResponse::NOT_SERVING) {
      saw_not_serving = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(saw_not_serving) << (*daemon)->ReadLog();
  v1::OpenSessionResponse refused;
  EXPECT_EQ(call([&](auto* c) { return stub->OpenSession(c, open, &refused); }).error_code(),
            grpc::StatusCode::UNAVAILABLE);

  EXPECT_EQ((*daemon)->Stop(), 0) << (*daemon)->ReadLog();
  // Drain, server grace (0.5 s) and a bounded teardown (2 s) that an abandoned op may use up.
  EXPECT_LT(SteadyClock::now() - start, std::chrono::milliseconds(kDrainMs + 3'500));
  pending.join();
  EXPECT_EQ(abandoned.error_code(), grpc::StatusCode::UNAVAILABLE) << abandoned.error_message();
}

TEST(DaemonLifecycleTest, TcpListenServesOnLoopback) {
  const int port = FreeLoopbackPort();
  ASSERT_GT(port, 0);
  const std::string tcp = "127.0.0.1:" + std::to_string(port);
  auto daemon = DaemonProcess::Start({"--tcp-listen", tcp}, 1);
  ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
  auto health = grpc::health::v1::Health::NewStub(
      grpc::CreateChannel(tcp, grpc::InsecureChannelCredentials()));
  EXPECT_EQ(CheckHealth(*health), grpc::health::v1::HealthCheckResponse::SERVING);
  EXPECT_EQ((*daemon)->Stop(), 0);
}

#ifdef EPD_TEST_WITH_SYSTEMD
// Reads one datagram from the fake NOTIFY_SOCKET within 5 s ("" on timeout).
std::string ReadNotification(int fd) {
  timeval timeout{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  char buffer[512];
  const ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
  return n > 0 ? std::string(buffer, static_cast<size_t>(n)) : "";
}

// Type=notify: systemd considers the service started at READY=1 and stopping at STOPPING=1.
TEST(DaemonLifecycleTest, NotifiesSystemdReadyAndStopping) {
  std::string pattern = "/tmp/epd-notify-XXXXXX";
  ASSERT_NE(mkdtemp(pattern.data()), nullptr);
  const std::string path = pattern + "/notify.sock";
  const int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);

  setenv("NOTIFY_SOCKET", path.c_str(), 1);  // inherited by the daemon only
  auto daemon = DaemonProcess::Start({}, 1);
  unsetenv("NOTIFY_SOCKET");
  ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
  EXPECT_THAT(ReadNotification(fd), HasSubstr("READY=1"));
  EXPECT_EQ((*daemon)->Stop(), 0);
  EXPECT_THAT(ReadNotification(fd), HasSubstr("STOPPING=1"));
  close(fd);
  std::filesystem::remove_all(pattern);
}
#endif

TEST(DaemonLifecycleTest, SigtermDrainsAndExitsZero) { ExpectPromptExitWithOpenStream(SIGTERM); }

TEST(DaemonLifecycleTest, SigintDrainsAndExitsZero) { ExpectPromptExitWithOpenStream(SIGINT); }

}  // namespace
}  // namespace epd::testing
