#include "daemon/backends/cpu/stale_shm.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <regex>

#include "daemon/core/log.h"

namespace epd {

bool IsRunningDaemon(pid_t pid) {
  std::ifstream comm("/proc/" + std::to_string(pid) + "/comm");
  std::string name;
  return std::getline(comm, name) && name == "epd";
}

int ReclaimStaleShm(const std::string& directory,
                    const std::function<bool(pid_t)>& is_running_daemon) {
  // The names NextShmName (cpu_backend.cc) makes; nothing else is touched.
  static const std::regex kDaemonObject(R"(epd-(\d{1,9})-[0-9a-f]{8}-(handle|fence|group)-\d+)");
  std::error_code error;
  int removed = 0;
  for (const auto& entry : std::filesystem::directory_iterator(directory, error)) {
    const std::string name = entry.path().filename().string();
    std::smatch match;
    if (!std::regex_match(name, match, kDaemonObject)) continue;
    const auto pid = static_cast<pid_t>(std::stol(match[1].str()));
    if (pid == getpid() || is_running_daemon(pid)) continue;
    if (std::filesystem::remove(entry.path(), error)) {
      ++removed;
    } else if (error) {
      EPD_LOG(kCpu, warn, "cannot remove the stale shm object {}: {}", name, error.message());
    }
  }
  if (removed > 0) {
    EPD_LOG(kCpu, info, "removed {} shm objects left by daemons that are gone", removed);
  }
  return removed;
}

}  // namespace epd
