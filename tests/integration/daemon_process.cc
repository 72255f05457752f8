#include "tests/integration/daemon_process.h"

#include <dirent.h>
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <thread>

#include "common/unix_socket_probe.h"

namespace epd::testing {
namespace {

using std::chrono::milliseconds;
using SteadyClock = std::chrono::steady_clock;

constexpr int kStartTimeoutMs = 10'000;
constexpr int kStopTimeoutMs = 10'000;

StatusOr<std::string> MakeTempDir() {
  std::string pattern = "/tmp/epd-test-XXXXXX";  // short: unix socket paths max 107 bytes
  if (mkdtemp(pattern.data()) == nullptr) {
    return InternalError("mkdtemp({}): {}", pattern, std::strerror(errno));
  }
  return pattern;
}

int DecodeWaitStatus(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

// Forks and execs epd with stdout+stderr appended to `log_path`. Everything the child does
// between fork and exec is async-signal-safe (the test process has gRPC threads).
StatusOr<pid_t> Spawn(const std::vector<std::string>& args, const std::string& log_path) {
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (const auto& arg : args) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  const int log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (log_fd < 0) return InternalError("open({}): {}", log_path, std::strerror(errno));
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    close(log_fd);
    return InternalError("fork: {}", std::strerror(errno));
  }
  if (pid == 0) {
    // A daemon must not outlive a crashed test runner and keep its socket busy.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    dup2(log_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(log_fd);
  return pid;
}

// A daemon killed (or one whose teardown was cut short) cannot unlink its POSIX shared
// memory; the cpu backend names it "epd-<pid>-...". Tests must not fill /dev/shm.
void RemoveLeftoverSharedMemory(pid_t pid) {
  const std::string prefix = "epd-" + std::to_string(pid) + "-";
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator("/dev/shm", error)) {
    if (entry.path().filename().string().rfind(prefix, 0) == 0) {
      std::filesystem::remove(entry.path(), error);
    }
  }
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

std::string BesideSelfOr(const std::string& build_path) {
  std::error_code error;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", error);
  if (error) return build_path;
  const std::filesystem::path beside =
      self.parent_path() / std::filesystem::path(build_path).filename();
  return std::filesystem::exists(beside, error) ? beside.string() : build_path;
}

const char* DaemonBinaryPath() {
  static const std::string path = BesideSelfOr(EPD_BINARY_PATH);
  return path.c_str();
}

StatusOr<std::unique_ptr<DaemonProcess>> DaemonProcess::Start(std::vector<std::string> extra_args,
                                                              int ranks) {
  std::unique_ptr<DaemonProcess> daemon(new DaemonProcess());
  EPD_ASSIGN_OR_RETURN(daemon->temp_dir_, MakeTempDir());
  daemon->socket_path_ = daemon->temp_dir_ + "/epd.sock";
  daemon->address_ = "unix://" + daemon->socket_path_;

  // No /metrics unless a test asks for it: daemons of parallel tests would share one port.
  std::vector<std::string> args = {DaemonBinaryPath(), "--backend", "cpu", "--cpu-ranks",
                                   std::to_string(ranks), "--listen", daemon->address_,
                                   "--metrics-listen", ""};
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  // The daemon serves on the last --listen given; wait for (and report) that one.
  for (size_t i = 0; i + 1 < extra_args.size(); ++i) {
    if (extra_args[i] != "--listen") continue;
    const std::string& listen = extra_args[i + 1];
    daemon->address_ = listen;
    daemon->socket_path_ = listen.substr(listen.rfind("unix://", 0) == 0 ? 7 : 5);
  }
  EPD_ASSIGN_OR_RETURN(daemon->pid_, Spawn(args, daemon->log_path()));
  daemon->spawned_pid_ = daemon->pid_;

  const auto deadline = SteadyClock::now() + milliseconds(kStartTimeoutMs);
  // Polling the socket directly avoids gRPC's reconnect backoff (up to seconds) while the
  // daemon is still starting.
  while (!ProbeUnixSocket(daemon->socket_path_).ok()) {
    int status = 0;
    if (waitpid(daemon->pid_, &status, WNOHANG) == daemon->pid_) {
      daemon->pid_ = -1;
      return UnavailableError("epd exited with {} before serving; log:\n{}",
                              DecodeWaitStatus(status), daemon->ReadLog());
    }
    if (SteadyClock::now() > deadline) {
      return DeadlineExceededError("epd did not accept connections on {} within {} ms; log:\n{}",
                                   daemon->socket_path_, kStartTimeoutMs, daemon->ReadLog());
    }
    std::this_thread::sleep_for(milliseconds(10));
  }
  auto channel = grpc::CreateChannel(daemon->address_, grpc::InsecureChannelCredentials());
  // gRPC deadlines are system_clock time points.
  const auto remaining = deadline - SteadyClock::now();
  if (!channel->WaitForConnected(std::chrono::system_clock::now() + remaining)) {
    return DeadlineExceededError("gRPC channel to {} not READY within {} ms; log:\n{}",
                                 daemon->address_, kStartTimeoutMs, daemon->ReadLog());
  }
  return daemon;
}

DaemonProcess::~DaemonProcess() {
  if (running()) Stop();
  if (spawned_pid_ > 0) RemoveLeftoverSharedMemory(spawned_pid_);
  if (!temp_dir_.empty() && std::getenv("EPD_TEST_KEEP_DIR") == nullptr) {
    std::error_code ignored;
    std::filesystem::remove_all(temp_dir_, ignored);
  }
}

std::string DaemonProcess::ReadLog() const { return ReadFile(log_path()); }

int DaemonProcess::WaitForExit(int timeout_ms) {
  const auto deadline = SteadyClock::now() + milliseconds(timeout_ms);
  while (true) {
    int status = 0;
    const pid_t done = waitpid(pid_, &status, WNOHANG);
    if (done == pid_) {
      pid_ = -1;
      return DecodeWaitStatus(status);
    }
    if (done < 0 || SteadyClock::now() > deadline) return -1;
    std::this_thread::sleep_for(milliseconds(5));
  }
}

int DaemonProcess::Stop() {
  if (!running()) return -1;
  kill(pid_, SIGTERM);
  const int code = WaitForExit(kStopTimeoutMs);
  if (code >= 0 || !running()) return code;
  Kill();
  return 128 + SIGKILL;
}

void DaemonProcess::Kill() {
  if (!running()) return;
  kill(pid_, SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

int RunDaemonToExit(const std::vector<std::string>& args, std::string* output, int timeout_ms) {
  auto dir = MakeTempDir();
  if (!dir.ok()) {
    if (output != nullptr) *output = dir.status().ToString();
    return -1;
  }
  const std::string log_path = *dir + "/epd.log";
  std::vector<std::string> argv = {DaemonBinaryPath()};
  argv.insert(argv.end(), args.begin(), args.end());
  int code = -1;
  auto pid = Spawn(argv, log_path);
  if (pid.ok()) {
    const auto deadline = SteadyClock::now() + milliseconds(timeout_ms);
    while (true) {
      int status = 0;
      if (waitpid(*pid, &status, WNOHANG) == *pid) {
        code = DecodeWaitStatus(status);
        break;
      }
      if (SteadyClock::now() > deadline) {
        kill(*pid, SIGKILL);
        waitpid(*pid, &status, 0);
        break;
      }
      std::this_thread::sleep_for(milliseconds(5));
    }
  }
  if (output != nullptr) *output = pid.ok() ? ReadFile(log_path) : pid.status().ToString();
  std::error_code ignored;
  std::filesystem::remove_all(*dir, ignored);
  return code;
}

int CountEntries(const std::string& dir, std::string_view prefix) {
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return -1;
  int count = 0;
  while (dirent* entry = readdir(d)) {
    const std::string_view name(entry->d_name);
    if (name != "." && name != ".." && name.substr(0, prefix.size()) == prefix) ++count;
  }
  closedir(d);
  return count;
}

int DaemonProcess::open_fds() const {
  return running() ? CountEntries("/proc/" + std::to_string(pid_) + "/fd") : -1;
}

namespace {

// TCP socket states by inode, from /proc/<pid>/net/tcp{,6} ("ESTABLISHED", "CLOSE_WAIT", ...).
std::map<std::string, std::string> TcpStates(pid_t pid) {
  static const char* const kNames[] = {"?",          "ESTABLISHED", "SYN_SENT",  "SYN_RECV",
                                       "FIN_WAIT1",  "FIN_WAIT2",   "TIME_WAIT", "CLOSE",
                                       "CLOSE_WAIT", "LAST_ACK",    "LISTEN",    "CLOSING"};
  std::map<std::string, std::string> states;
  for (const char* table : {"tcp", "tcp6"}) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/net/" + table);
    std::string line;
    std::getline(in, line);  // the header
    while (std::getline(in, line)) {
      std::istringstream fields(line);
      std::string slot, local, remote, state, queues, timer, retransmits, uid, timeout, inode;
      fields >> slot >> local >> remote >> state >> queues >> timer >> retransmits >> uid >>
          timeout >> inode;
      const unsigned long code = std::strtoul(state.c_str(), nullptr, 16);
      states[inode] = std::string(table) + " " + (code < std::size(kNames) ? kNames[code] : "?");
    }
  }
  return states;
}

}  // namespace

std::map<std::string, int> DaemonProcess::fds_by_kind() const {
  std::map<std::string, int> kinds;
  if (!running()) return kinds;
  const std::map<std::string, std::string> tcp = TcpStates(pid_);
  std::error_code error;
  for (const auto& entry :
       std::filesystem::directory_iterator("/proc/" + std::to_string(pid_) + "/fd", error)) {
    std::string target = std::filesystem::read_symlink(entry.path(), error).string();
    if (error) continue;  // closed meanwhile
    // "socket:[inode]" and "pipe:[inode]" name one object each; their kind is what counts.
    if (target.rfind("socket:[", 0) == 0) {
      auto state = tcp.find(target.substr(8, target.size() - 9));
      target = "socket " + (state != tcp.end() ? state->second : std::string("unix or other"));
    } else if (target.rfind("pipe:", 0) == 0) {
      target = "pipe";
    }
    ++kinds[target];
  }
  return kinds;
}

int DaemonProcess::threads() const {
  return running() ? CountEntries("/proc/" + std::to_string(pid_) + "/task") : -1;
}

int64_t DaemonProcess::resident_kib() const {
  if (!running()) return -1;
  std::ifstream status("/proc/" + std::to_string(pid_) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  }
  return -1;
}

int WaitAtMost(const std::function<int()>& value, int bound) {
  int got = value();
  for (int i = 0; i < 1000 && got > bound; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    got = value();
  }
  return got;
}

}  // namespace epd::testing
