// Shared pieces of the client-driven integration tests: a daemon per suite, one client (own
// channel, own session) per rank on its own thread, and status assertions that name the
// expected code and message fragments.
#pragma once

#include <gtest/gtest.h>
#include <sys/types.h>

#include <chrono>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "client/epd/client.h"
#include "client/examples/moe_math.h"
#include "client/examples/rank_runner.h"
#include "common/grpc_status.h"
#include "common/session_secret.h"
#include "tests/integration/daemon_process.h"

namespace epd::testing {

// A name no other test of this run uses ("<prefix>-<pid>-<n>").
std::string UniqueName(std::string_view prefix);

// Short client-side limits (20 s per op) so a hang fails a test quickly.
ClientOptions ShortClientLimits();
// Connects with ShortClientLimits().
std::unique_ptr<Client> ConnectOrDie(const std::string& address);

// Runs fn(rank) for rank 0..ranks-1 on one thread each; returns their statuses by rank.
std::vector<Status> RunOnRanks(int ranks, const std::function<Status(int rank)>& fn);

// gtest assertion: `status` has `code` and its message contains every fragment.
::testing::AssertionResult HasError(const Status& status, StatusCode code,
                                    std::initializer_list<std::string_view> fragments);
#define EXPECT_EPD_ERROR(status, code, ...) \
  EXPECT_TRUE(::epd::testing::HasError((status), (code), {__VA_ARGS__}))
#define EXPECT_EPD_OK(expr)                                            \
  do {                                                                 \
    const ::epd::Status epd_test_status_ = (expr);                     \
    EXPECT_TRUE(epd_test_status_.ok()) << epd_test_status_.ToString(); \
  } while (0)
#define ASSERT_EPD_OK(expr)                                            \
  do {                                                                 \
    const ::epd::Status epd_test_status_ = (expr);                     \
    ASSERT_TRUE(epd_test_status_.ok()) << epd_test_status_.ToString(); \
  } while (0)

// One frontend rank: its client (connection) and runner (session, handle, buffers).
struct RankClient {
  std::unique_ptr<Client> client;
  std::unique_ptr<example::RankRunner> runner;
};

// Creates one RankClient per rank, in parallel (as separate frontends would).
StatusOr<std::vector<RankClient>> MakeRanks(const std::string& address,
                                            const example::Problem& problem,
                                            const example::RankRunnerOptions& options,
                                            const ClientOptions& client_options = {});

// The small layer most client-driven tests run: bf16, E 4, H 64, T 16, K 2 over `ranks`.
example::Problem SmallProblem(int ranks = 2);

// One layer on every rank (identity expert), checked bit for bit; returns the first error.
Status RunGoodLayer(std::vector<RankClient>& ranks, int iteration, bool fenced = false);

// Polls GetStats until `pred` holds (at most 5 s); returns the last stats.
v1::Stats WaitForStats(Client& client, const std::function<bool(const v1::Stats&)>& pred);
// Ops of session `session_id` on the daemon's execution streams and not yet completed there
// (ListSessions' ops_running), e.g. a dispatch waiting for its peers; -1 when not listed.
int64_t OpsRunning(v1::Epd::Stub& stub, uint64_t session_id);
// Polls OpsRunning until it equals `want` (at most 10 s): how a test knows an op is pending
// on the daemon before it acts. Returns the last value.
int64_t WaitForOpsRunning(v1::Epd::Stub& stub, uint64_t session_id, int64_t want);
// Handles of `group` per ListGroups; -1 when the group does not exist.
int HandlesOf(Client& client, const std::string& group);
// The address of a daemon started with `--tcp-listen 127.0.0.1:0`, from the port its log
// names ("127.0.0.1:<port>"); NOT_FOUND with the log when it names none.
StatusOr<std::string> TcpAddressOf(const DaemonProcess& daemon);

// A hand-made unary call on the raw stub, as grpcurl or a client in another language makes
// it: a 5 s deadline and header epd-session-secret once per element of `secrets` (none: no
// header). The daemon's answer as a Status.
template <typename Request, typename Response>
Status RawCall(v1::Epd::Stub& stub,
               grpc::Status (v1::Epd::Stub::*method)(grpc::ClientContext*, const Request&,
                                                     Response*),
               const Request& request, Response* response,
               std::initializer_list<std::string_view> secrets = {}) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  for (std::string_view secret : secrets) {
    context.AddMetadata(std::string(kSessionSecretHeader), std::string(secret));
  }
  return FromGrpcStatus((stub.*method)(&context, request, response));
}

// A child process running `argv` (absolute binary path first) with stdout on a pipe.
class ChildProcess {
 public:
  static StatusOr<std::unique_ptr<ChildProcess>> Spawn(const std::vector<std::string>& argv);
  ~ChildProcess();  // SIGKILL + reap when still running
  // Reads one line of the child's stdout (without '\n'), waiting up to timeout_ms.
  StatusOr<std::string> ReadLine(int timeout_ms);
  void Kill();               // SIGKILL and reap
  int Wait(int timeout_ms);  // exit code, 128 + signal, or -1 on timeout
  pid_t pid() const { return pid_; }

 private:
  ChildProcess() = default;
  pid_t pid_ = -1;
  int stdout_fd_ = -1;
  std::string pending_;
};

// Absolute path of a binary built next to the test (compile definitions).
const char* HelperClientPath();
const char* ExampleFrontendPath();

}  // namespace epd::testing
