// Processes of the daemon modes: the epd daemon started by epd-bench, the frontend processes
// (one per rank, epd-bench itself re-executed), and a barrier in POSIX shared memory that
// lines the frontends up before every timed op.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"

namespace epd::bench {

// Path of the running executable (/proc/self/exe) and its folder.
std::string SelfPath();
std::string SelfDir();

// Starts `argv` with stdout+stderr appended to `log_path` ("" keeps ours); returns its pid.
StatusOr<pid_t> Spawn(const std::vector<std::string>& argv, const std::string& log_path);
// Waits up to `timeout` for `pid`; its exit code, 128 + signal, or -1 on timeout.
int WaitFor(pid_t pid, std::chrono::milliseconds timeout);
void Terminate(pid_t pid);  // SIGTERM, 10 s grace, then SIGKILL; reaps

// Sets environment variables for the processes started while it lives (epd-bench starts them
// one at a time from its main thread) and puts the old values back.
class ScopedEnv {
 public:
  explicit ScopedEnv(const std::map<std::string, std::string>& values);
  ~ScopedEnv();
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::map<std::string, std::optional<std::string>> saved_;
};

// An epd daemon on a private unix socket.
class Daemon {
 public:
  // epd_path: the epd binary; extra: flags after --backend/--listen (e.g. --cpu-ranks 2).
  static StatusOr<std::unique_ptr<Daemon>> Start(const std::string& epd_path,
                                                 const std::string& backend,
                                                 std::vector<std::string> extra,
                                                 std::chrono::milliseconds start_timeout);
  ~Daemon();
  const std::string& address() const { return address_; }
  const std::string& log_path() const { return log_path_; }
  std::string ReadLog() const;

 private:
  Daemon() = default;
  std::string dir_, address_, socket_path_, log_path_;
  pid_t pid_ = -1;
};

// A reusable barrier of `count` processes in a POSIX shared memory object. Wait(ok) returns
// false in every process when any of them arrived with ok = false, so all leave a failed
// case together; DEADLINE_EXCEEDED when a peer does not arrive within `timeout`.
class ShmBarrier {
 public:
  static StatusOr<std::unique_ptr<ShmBarrier>> Create(int count);  // owner: unlinks the name
  static StatusOr<std::unique_ptr<ShmBarrier>> Open(const std::string& name);
  ~ShmBarrier();
  const std::string& name() const { return name_; }
  StatusOr<bool> Wait(bool ok, std::chrono::milliseconds timeout);

 private:
  struct State {
    std::atomic<uint32_t> count;
    std::atomic<uint32_t> arrived;
    std::atomic<uint32_t> generation;
    std::atomic<uint32_t> bad[2];
  };
  ShmBarrier() = default;
  std::string name_;
  State* state_ = nullptr;
  bool owner_ = false;
};

}  // namespace epd::bench
