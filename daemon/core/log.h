// One spdlog logger per component (rpc, core, cpu, cuda, nccl, ipc). The level is set once
// from the flag / config / EPD_LOG_LEVEL; spdlog checks it before formatting, so disabled
// lines cost a branch. Every line names the group, rank and op it concerns.
#pragma once

#include <spdlog/spdlog.h>

#include <string_view>

namespace epd::log {

enum class Component { kRpc, kCore, kCpu, kCuda, kNccl, kIpc };

spdlog::logger& Get(Component component);
// Accepts trace, debug, info, warn, error, critical, off.
bool SetLevel(std::string_view level);

}  // namespace epd::log

#define EPD_LOG(component, level, ...) \
  ::epd::log::Get(::epd::log::Component::component).level(__VA_ARGS__)
