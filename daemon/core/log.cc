#include "daemon/core/log.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <memory>

#ifdef EPD_WITH_SYSTEMD
#include <spdlog/sinks/systemd_sink.h>
#endif

namespace epd::log {
namespace {

constexpr std::array<const char*, 6> kNames = {"rpc", "core", "cpu", "cuda", "nccl", "ipc"};

struct Loggers {
  Loggers() {
    spdlog::sink_ptr sink;
#ifdef EPD_WITH_SYSTEMD
    if (StreamIsJournal(std::getenv("JOURNAL_STREAM"), STDERR_FILENO)) {
      // The journal stamps time and priority itself; the message keeps the component.
      sink = std::make_shared<spdlog::sinks::systemd_sink_mt>("epd", /*enable_formatting=*/true);
      sink->set_pattern("[%n] %v");
      journal = true;
    }
#endif
    if (sink == nullptr) {
      sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
      sink->set_formatter(std::make_unique<spdlog::pattern_formatter>(
          "%Y-%m-%dT%H:%M:%S.%eZ %^%l%$ [%n] %v", spdlog::pattern_time_type::utc));
    }
    for (size_t i = 0; i < kNames.size(); ++i) {
      loggers[i] = std::make_shared<spdlog::logger>(kNames[i], sink);
    }
    const char* env = std::getenv("EPD_LOG_LEVEL");
    spdlog::level::level_enum level = spdlog::level::info;
    if (env != nullptr) level = spdlog::level::from_str(env);
    for (auto& logger : loggers) logger->set_level(level);
  }
  std::array<std::shared_ptr<spdlog::logger>, kNames.size()> loggers;
  bool journal = false;
};

Loggers& All() {
  static Loggers* loggers = new Loggers();  // never destroyed: usable from any static dtor
  return *loggers;
}

}  // namespace

spdlog::logger& Get(Component component) { return *All().loggers[static_cast<size_t>(component)]; }

bool SetLevel(std::string_view name) {
  auto level = spdlog::level::from_str(std::string(name));
  if (level == spdlog::level::off && name != "off") return false;
  for (auto& logger : All().loggers) logger->set_level(level);
  return true;
}

std::string_view LevelName() {
  const auto name = spdlog::level::to_string_view(All().loggers[0]->level());
  return std::string_view(name.data(), name.size());
}

bool StreamIsJournal(const char* journal_stream, int fd) {
  if (journal_stream == nullptr) return false;
  uintmax_t device = 0, inode = 0;
  if (std::sscanf(journal_stream, "%" SCNuMAX ":%" SCNuMAX, &device, &inode) != 2) return false;
  struct stat st {};
  if (fstat(fd, &st) != 0) return false;
  return static_cast<uintmax_t>(st.st_dev) == device && static_cast<uintmax_t>(st.st_ino) == inode;
}

std::string_view Destination() { return All().journal ? "journal" : "stderr"; }

}  // namespace epd::log
