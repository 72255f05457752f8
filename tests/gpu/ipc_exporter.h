// ExporterProcess: a second copy of the GPU test binary acting as a frontend that exports
// memory through CUDA IPC (a handle cannot be opened by the process that made it). The child
// runs the test IpcExporterChild.ExportUntilStdinCloses (ipc_import_test.cc): it exports
// kExportBytes filled with 0x5a, prints the handle and waits for its stdin to close.
#pragma once

#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "daemon/core/backend.h"

namespace epd::gputest {

inline constexpr size_t kExportBytes = 2 << 20;
inline constexpr const char* kChildEnv = "EPD_GPU_TEST_IPC_EXPORTER";

inline std::string ToHex(const void* data, size_t bytes) {
  static const char* digits = "0123456789abcdef";
  std::string hex;
  for (size_t i = 0; i < bytes; ++i) {
    const auto b = static_cast<const unsigned char*>(data)[i];
    hex += digits[b >> 4];
    hex += digits[b & 15];
  }
  return hex;
}

inline std::string FromHex(const std::string& hex) {
  std::string bytes;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    bytes += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
  }
  return bytes;
}

class ExporterProcess {
 public:
  ExporterProcess() {
    int to_child[2], from_child[2];
    if (pipe(to_child) != 0 || pipe(from_child) != 0) return;
    // Everything exec needs is prepared before fork: the child only calls async-signal-safe
    // functions until execve.
    std::string env = std::string(kChildEnv) + "=1";
    std::vector<std::string> env_strings = {env};
    for (char** e = environ; *e != nullptr; ++e) env_strings.emplace_back(*e);
    std::vector<char*> envp;
    for (auto& s : env_strings) envp.push_back(s.data());
    envp.push_back(nullptr);
    std::string filter = "--gtest_filter=IpcExporterChild.*";
    char exe[] = "/proc/self/exe";
    char* argv[] = {exe, filter.data(), nullptr};
    pid_ = fork();
    if (pid_ == 0) {
      dup2(to_child[0], STDIN_FILENO);
      dup2(from_child[1], STDOUT_FILENO);
      close(to_child[1]);
      close(from_child[0]);
      execve(exe, argv, envp.data());
      _exit(127);
    }
    close(to_child[0]);
    close(from_child[1]);
    stdin_ = to_child[1];
    FILE* out = fdopen(from_child[0], "r");
    char line[4096];
    while (out != nullptr && std::fgets(line, sizeof(line), out) != nullptr) {
      std::string s(line);
      if (s.rfind("HANDLE ", 0) == 0) {
        handle_ = FromHex(s.substr(7, 128));
        break;
      }
    }
    out_ = out;
  }
  ~ExporterProcess() {
    if (stdin_ >= 0) close(stdin_);
    if (pid_ > 0) waitpid(pid_, nullptr, 0);
    if (out_ != nullptr) fclose(out_);
  }
  const std::string& handle() const { return handle_; }

 private:
  pid_t pid_ = -1;
  int stdin_ = -1;
  FILE* out_ = nullptr;
  std::string handle_;
};

inline MemorySource Source(const std::string& handle, uint64_t offset, uint64_t size) {
  MemorySource s;
  s.kind = MemorySource::Kind::kCudaIpc;
  s.ipc_handle = handle;
  s.device = 0;
  s.offset = offset;
  s.size = size;
  return s;
}

}  // namespace epd::gputest
