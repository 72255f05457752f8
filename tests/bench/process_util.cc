#include "tests/bench/process_util.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "common/unix_socket_probe.h"

namespace epd::bench {
namespace {

using SteadyClock = std::chrono::steady_clock;

int Decode(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

}  // namespace

std::string SelfPath() {
  std::error_code error;
  auto path = std::filesystem::read_symlink("/proc/self/exe", error);
  return error ? std::string() : path.string();
}

std::string SelfDir() { return std::filesystem::path(SelfPath()).parent_path().string(); }

StatusOr<pid_t> Spawn(const std::vector<std::string>& args, const std::string& log_path) {
  std::vector<char*> argv;
  for (const auto& arg : args) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  int log_fd = -1;
  if (!log_path.empty()) {
    log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log_fd < 0) return InternalError("open({}): {}", log_path, std::strerror(errno));
  }
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    if (log_fd >= 0) close(log_fd);
    return InternalError("fork: {}", std::strerror(errno));
  }
  if (pid == 0) {
    // Only async-signal-safe calls until exec: the parent may have gRPC / CUDA threads.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    if (log_fd >= 0) {
      dup2(log_fd, STDOUT_FILENO);
      dup2(log_fd, STDERR_FILENO);
    }
    execv(argv[0], argv.data());
    _exit(127);
  }
  if (log_fd >= 0) close(log_fd);
  return pid;
}

int WaitFor(pid_t pid, std::chrono::milliseconds timeout) {
  const auto deadline = SteadyClock::now() + timeout;
  while (true) {
    int status = 0;
    const pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) return Decode(status);
    if (done < 0 || SteadyClock::now() > deadline) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

void Terminate(pid_t pid) {
  if (pid <= 0) return;
  kill(pid, SIGTERM);
  if (WaitFor(pid, std::chrono::milliseconds(10'000)) >= 0) return;
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
}

ScopedEnv::ScopedEnv(const std::map<std::string, std::string>& values) {
  for (const auto& [name, value] : values) {
    const char* old = std::getenv(name.c_str());
    saved_[name] = old != nullptr ? std::optional<std::string>(old) : std::nullopt;
    setenv(name.c_str(), value.c_str(), 1);
  }
}

ScopedEnv::~ScopedEnv() {
  for (const auto& [name, old] : saved_) {
    if (old) {
      setenv(name.c_str(), old->c_str(), 1);
    } else {
      unsetenv(name.c_str());
    }
  }
}

StatusOr<std::unique_ptr<Daemon>> Daemon::Start(const std::string& epd_path,
                                                const std::string& backend,
                                                std::vector<std::string> extra,
                                                std::chrono::milliseconds start_timeout) {
  std::unique_ptr<Daemon> daemon(new Daemon());
  std::string pattern = "/tmp/epd-bench-XXXXXX";  // short: unix socket paths max 107 bytes
  if (mkdtemp(pattern.data()) == nullptr) {
    return InternalError("mkdtemp: {}", std::strerror(errno));
  }
  daemon->dir_ = pattern;
  daemon->socket_path_ = pattern + "/epd.sock";
  daemon->address_ = "unix://" + daemon->socket_path_;
  daemon->log_path_ = pattern + "/epd.log";
  // No /metrics: a private daemon must not take the node's metrics port (nor race a
  // parallel test's daemon for it).
  std::vector<std::string> argv = {epd_path,  "--backend",        backend, "--listen",
                                   daemon->address_, "--metrics-listen", ""};
  argv.insert(argv.end(), extra.begin(), extra.end());
  EPD_ASSIGN_OR_RETURN(daemon->pid_, Spawn(argv, daemon->log_path_));
  const auto deadline = SteadyClock::now() + start_timeout;
  while (!ProbeUnixSocket(daemon->socket_path_).ok()) {
    int status = 0;
    if (waitpid(daemon->pid_, &status, WNOHANG) == daemon->pid_) {
      daemon->pid_ = -1;
      return UnavailableError("{} exited with {} before serving; log:\n{}", epd_path,
                              Decode(status), daemon->ReadLog());
    }
    if (SteadyClock::now() > deadline) {
      return DeadlineExceededError("epd did not listen on {} within {} ms; log:\n{}",
                                   daemon->socket_path_, start_timeout.count(), daemon->ReadLog());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return daemon;
}

Daemon::~Daemon() {
  Terminate(pid_);
  if (!dir_.empty() && std::getenv("EPD_BENCH_KEEP_DIR") == nullptr) {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
}

std::string Daemon::ReadLog() const {
  std::ifstream in(log_path_);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

StatusOr<std::unique_ptr<ShmBarrier>> ShmBarrier::Create(int count) {
  std::unique_ptr<ShmBarrier> barrier(new ShmBarrier());
  barrier->name_ = fmt::format("/epd-bench-{}-barrier", getpid());
  const int fd = shm_open(barrier->name_.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  if (fd < 0) return InternalError("shm_open({}): {}", barrier->name_, std::strerror(errno));
  if (ftruncate(fd, sizeof(State)) != 0) {
    close(fd);
    shm_unlink(barrier->name_.c_str());
    return InternalError("ftruncate({}): {}", barrier->name_, std::strerror(errno));
  }
  void* data = mmap(nullptr, sizeof(State), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (data == MAP_FAILED) return InternalError("mmap({}): {}", barrier->name_, std::strerror(errno));
  barrier->state_ = new (data) State{};
  barrier->state_->count.store(static_cast<uint32_t>(count));
  barrier->owner_ = true;
  return barrier;
}

StatusOr<std::unique_ptr<ShmBarrier>> ShmBarrier::Open(const std::string& name) {
  std::unique_ptr<ShmBarrier> barrier(new ShmBarrier());
  barrier->name_ = name;
  const int fd = shm_open(name.c_str(), O_RDWR, 0600);
  if (fd < 0) return InternalError("shm_open({}): {}", name, std::strerror(errno));
  void* data = mmap(nullptr, sizeof(State), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (data == MAP_FAILED) return InternalError("mmap({}): {}", name, std::strerror(errno));
  barrier->state_ = static_cast<State*>(data);
  return barrier;
}

ShmBarrier::~ShmBarrier() {
  if (state_ != nullptr) munmap(state_, sizeof(State));
  if (owner_) shm_unlink(name_.c_str());
}

StatusOr<bool> ShmBarrier::Wait(bool ok, std::chrono::milliseconds timeout) {
  State& s = *state_;
  const uint32_t generation = s.generation.load(std::memory_order_acquire);
  const int slot = generation & 1;
  if (!ok) s.bad[slot].store(1, std::memory_order_relaxed);
  if (s.arrived.fetch_add(1, std::memory_order_acq_rel) + 1 == s.count.load()) {
    // Last to arrive: reset for the next phase, then release this one.
    s.arrived.store(0, std::memory_order_relaxed);
    s.bad[slot ^ 1].store(0, std::memory_order_relaxed);
    s.generation.store(generation + 1, std::memory_order_release);
  } else {
    const auto deadline = SteadyClock::now() + timeout;
    int spins = 0;
    while (s.generation.load(std::memory_order_acquire) == generation) {
      // Spin briefly (the timed span starts right after), then yield.
      if (++spins > 1000) {
        std::this_thread::yield();
        if ((spins & 1023) == 0 && SteadyClock::now() > deadline) {
          return DeadlineExceededError("barrier {}: a peer did not arrive within {} ms", name_,
                                       timeout.count());
        }
      }
    }
  }
  return s.bad[slot].load(std::memory_order_relaxed) == 0;
}

}  // namespace epd::bench
