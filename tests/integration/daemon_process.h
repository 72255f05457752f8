// DaemonProcess: runs the real `epd` binary for an integration test.
//
// Start() makes a private temporary directory, forks/execs epd with
//   --backend cpu --cpu-ranks N --listen unix://<tmpdir>/epd.sock --metrics-listen ""
//   <extra_args...>
// (later flags win, so extra_args may override any of these; an overriding --listen unix:...
// becomes address()), sends its stdout and stderr to <tmpdir>/epd.log, and returns once a
// gRPC channel to the socket is READY (at most 10 s).
// The destructor stops the daemon (SIGTERM, then SIGKILL), removes the directory and any
// shared memory a killed daemon left in /dev/shm.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace epd::testing {

class DaemonProcess {
 public:
  static StatusOr<std::unique_ptr<DaemonProcess>> Start(std::vector<std::string> extra_args,
                                                        int ranks = 2);
  ~DaemonProcess();
  DaemonProcess(const DaemonProcess&) = delete;
  DaemonProcess& operator=(const DaemonProcess&) = delete;

  // "unix:///tmp/epd-test-XXXXXX/epd.sock": pass to grpc::CreateChannel / epd::Client.
  const std::string& address() const { return address_; }
  // The socket's file system path (without "unix://").
  const std::string& socket_path() const { return socket_path_; }
  const std::string& temp_dir() const { return temp_dir_; }
  std::string log_path() const { return temp_dir_ + "/epd.log"; }
  std::string ReadLog() const;
  pid_t pid() const { return pid_; }
  bool running() const { return pid_ > 0; }
  // What the running daemon holds now (from /proc; -1 when it is not running): its open file
  // descriptors and its threads.
  int open_fds() const;
  int threads() const;
  // Its resident memory (VmRSS) in KiB; -1 when it is not running.
  int64_t resident_kib() const;
  // Its open file descriptors by kind: "socket tcp ESTABLISHED" (and other TCP states),
  // "socket unix or other", "pipe", "anon_inode:[eventfd]", a path.
  std::map<std::string, int> fds_by_kind() const;

  // SIGTERM, waits up to 10 s (then SIGKILL). Returns the exit code, 128 + signal when killed
  // by a signal, or -1 when it was not running.
  int Stop();
  // SIGKILL and reap: simulates a crash.
  void Kill();

 private:
  DaemonProcess() = default;
  // Waits up to `timeout_ms` for the child to exit; returns its exit status or -1.
  int WaitForExit(int timeout_ms);

  std::string temp_dir_;
  std::string socket_path_;
  std::string address_;
  pid_t pid_ = -1;
  pid_t spawned_pid_ = -1;  // kept after the daemon exits, to clean up what it left
};

// Entries of directory `dir` whose names start with `prefix`; -1 when it cannot be read.
int CountEntries(const std::string& dir, std::string_view prefix = "");

// Polls `value` until it is at most `bound` (10 s); returns the last value. For counts that
// settle once the kernel and a peer's threads closed what they were closing.
int WaitAtMost(const std::function<int()>& value, int bound);

// Runs `epd` with exactly `args` (no defaults added), waits up to `timeout_ms` for it to exit
// and returns its exit code (128 + signal when killed, -1 on timeout: the child is killed).
// stdout+stderr are captured into `output`. For tests of startup errors.
int RunDaemonToExit(const std::vector<std::string>& args, std::string* output,
                    int timeout_ms = 10'000);

// Path of the epd binary under test: beside the running test binary when it is there (a
// relocated bundle on a GPU host), else where the build put it (EPD_BINARY_PATH).
const char* DaemonBinaryPath();

// `build_path` relocated: the file of the same name beside the running executable when it
// exists there, else `build_path` itself.
std::string BesideSelfOr(const std::string& build_path);

}  // namespace epd::testing
