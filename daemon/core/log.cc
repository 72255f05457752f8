#include "daemon/core/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <array>
#include <cstdlib>
#include <memory>
#include <mutex>

namespace epd::log {
namespace {

constexpr std::array<const char*, 6> kNames = {"rpc", "core", "cpu", "cuda", "nccl", "ipc"};

struct Loggers {
  Loggers() {
    auto sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
    for (size_t i = 0; i < kNames.size(); ++i) {
      loggers[i] = std::make_shared<spdlog::logger>(kNames[i], sink);
      loggers[i]->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ [%n] %v");
    }
    const char* env = std::getenv("EPD_LOG_LEVEL");
    spdlog::level::level_enum level = spdlog::level::info;
    if (env != nullptr) level = spdlog::level::from_str(env);
    for (auto& logger : loggers) logger->set_level(level);
  }
  std::array<std::shared_ptr<spdlog::logger>, kNames.size()> loggers;
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

}  // namespace epd::log
