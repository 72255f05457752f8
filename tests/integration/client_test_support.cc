#include "tests/integration/client_test_support.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <regex>
#include <thread>

namespace epd::testing {

std::string UniqueName(std::string_view prefix) {
  static std::atomic<int> counter{0};
  return fmt::format("{}-{}-{}", prefix, getpid(), counter.fetch_add(1));
}

ClientOptions ShortClientLimits() {
  ClientOptions options;
  options.connect_timeout = std::chrono::milliseconds(5'000);
  options.rpc_timeout = std::chrono::milliseconds(10'000);
  options.op_timeout = std::chrono::milliseconds(20'000);
  return options;
}

std::unique_ptr<Client> ConnectOrDie(const std::string& address) {
  auto client = Client::Connect(address, ShortClientLimits());
  if (!client.ok()) {
    ADD_FAILURE() << client.status().ToString();
    return nullptr;
  }
  return std::move(client).value();
}

std::vector<Status> RunOnRanks(int ranks, const std::function<Status(int rank)>& fn) {
  std::vector<Status> statuses(ranks);
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r) threads.emplace_back([&, r] { statuses[r] = fn(r); });
  for (auto& thread : threads) thread.join();
  return statuses;
}

::testing::AssertionResult HasError(const Status& status, StatusCode code,
                                    std::initializer_list<std::string_view> fragments) {
  if (status.code() != code) {
    return ::testing::AssertionFailure()
           << "expected " << StatusCodeName(code) << ", got " << status.ToString();
  }
  for (std::string_view fragment : fragments) {
    if (status.message().find(fragment) == std::string::npos) {
      return ::testing::AssertionFailure()
             << "message of " << status.ToString() << " does not name '" << fragment << "'";
    }
  }
  return ::testing::AssertionSuccess() << status.ToString();
}

StatusOr<std::vector<RankClient>> MakeRanks(const std::string& address,
                                            const example::Problem& problem,
                                            const example::RankRunnerOptions& options,
                                            const ClientOptions& client_options) {
  std::vector<RankClient> ranks(problem.ranks);
  const std::vector<Status> statuses = RunOnRanks(problem.ranks, [&](int r) -> Status {
    auto client = Client::Connect(address, client_options);
    if (!client.ok()) return client.status();
    ranks[r].client = std::move(client).value();
    auto runner = example::RankRunner::Create(*ranks[r].client, problem, r, options);
    if (!runner.ok()) return runner.status().WithContext(fmt::format("rank {}", r));
    ranks[r].runner = std::move(runner).value();
    return OkStatus();
  });
  for (const Status& status : statuses) EPD_RETURN_IF_ERROR(status);
  return ranks;
}

example::Problem SmallProblem(int ranks) {
  example::Problem p;
  p.ranks = ranks;
  p.experts = 4;
  p.hidden = 64;
  p.max_tokens = 16;
  p.top_k = 2;
  p.dtype = v1::DTYPE_BF16;
  return p;
}

Status RunGoodLayer(std::vector<RankClient>& ranks, int iteration, bool fenced) {
  const std::vector<Status> statuses = RunOnRanks(static_cast<int>(ranks.size()), [&](int r) {
    example::RankRunner& runner = *ranks[r].runner;
    const int n = example::TokensFor(runner.problem(), r, iteration);
    const auto in = example::MakeInputs(runner.problem(), 7, r, iteration, n, true);
    return runner.RunAndCheck(in, example::Identity, fenced)
        .WithContext(fmt::format("rank {} layer {}", r, iteration));
  });
  for (const Status& status : statuses) EPD_RETURN_IF_ERROR(status);
  return OkStatus();
}

v1::Stats WaitForStats(Client& client, const std::function<bool(const v1::Stats&)>& pred) {
  v1::Stats stats;
  for (int i = 0; i < 500; ++i) {
    auto got = client.GetStats();
    if (got.ok()) {
      stats = *got;
      if (pred(stats)) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return stats;
}

int64_t OpsRunning(v1::Epd::Stub& stub, uint64_t session_id) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::ListSessionsResponse sessions;
  if (!stub.ListSessions(&context, v1::ListSessionsRequest(), &sessions).ok()) return -1;
  for (const v1::SessionSummary& s : sessions.sessions()) {
    if (s.session_id() == session_id) return static_cast<int64_t>(s.ops_running());
  }
  return -1;
}

int64_t WaitForOpsRunning(v1::Epd::Stub& stub, uint64_t session_id, int64_t want) {
  int64_t got = OpsRunning(stub, session_id);
  for (int i = 0; i < 1000 && got != want; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    got = OpsRunning(stub, session_id);
  }
  return got;
}

int HandlesOf(Client& client, const std::string& group) {
  auto groups = client.ListGroups();
  if (!groups.ok()) return -2;
  for (const auto& g : *groups) {
    if (g.config().name() == group) return g.handles();
  }
  return -1;
}

StatusOr<std::string> TcpAddressOf(const DaemonProcess& daemon) {
  const std::string log = daemon.ReadLog();
  std::smatch port;
  if (!std::regex_search(log, port, std::regex(R"(\(port (\d+)\))"))) {
    return NotFoundError("the daemon's log names no TCP port:\n{}", log);
  }
  return "127.0.0.1:" + port[1].str();
}

// ------------------------------------------------------------------ ChildProcess

StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Spawn(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const auto& arg : args) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return InternalError("pipe2: {}", std::strerror(errno));
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    return InternalError("fork: {}", std::strerror(errno));
  }
  if (pid == 0) {
    // Only async-signal-safe calls until exec: this process has gRPC threads.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    dup2(fds[1], STDOUT_FILENO);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(fds[1]);
  auto child = std::unique_ptr<ChildProcess>(new ChildProcess());
  child->pid_ = pid;
  child->stdout_fd_ = fds[0];
  return child;
}

ChildProcess::~ChildProcess() {
  Kill();
  if (stdout_fd_ >= 0) close(stdout_fd_);
}

StatusOr<std::string> ChildProcess::ReadLine(int timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (true) {
    if (auto eol = pending_.find('\n'); eol != std::string::npos) {
      std::string line = pending_.substr(0, eol);
      pending_.erase(0, eol + 1);
      return line;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      return DeadlineExceededError("child {} wrote no line within {} ms", pid_, timeout_ms);
    }
    pollfd pfd{stdout_fd_, POLLIN, 0};
    if (poll(&pfd, 1, static_cast<int>(left.count())) <= 0) continue;
    char chunk[512];
    const ssize_t got = read(stdout_fd_, chunk, sizeof(chunk));
    if (got <= 0) return UnavailableError("child {} closed its stdout ('{}')", pid_, pending_);
    pending_.append(chunk, static_cast<size_t>(got));
  }
}

void ChildProcess::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

int ChildProcess::Wait(int timeout_ms) {
  if (pid_ <= 0) return -1;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      if (WIFEXITED(status)) return WEXITSTATUS(status);
      if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return -1;
}

const char* HelperClientPath() {
  static const std::string path = BesideSelfOr(EPD_HELPER_CLIENT_PATH);
  return path.c_str();
}
const char* ExampleFrontendPath() {
  static const std::string path = BesideSelfOr(EPD_EXAMPLE_FRONTEND_PATH);
  return path.c_str();
}

}  // namespace epd::testing
