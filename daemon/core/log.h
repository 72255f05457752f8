// One spdlog logger per component (rpc, core, cpu, cuda, nccl, ipc). The level is set from the
// flag / config / EPD_LOG_LEVEL (and again on SIGHUP); spdlog checks it before formatting, so
// disabled lines cost a branch. Every line names the group, rank and op it concerns.
//
// Where lines go: to the journal with real priorities (error, warning, info, ...) when
// systemd connected our stderr to it (JOURNAL_STREAM names stderr's device:inode); otherwise
// to stderr, each line stamped in UTC ("2026-12-01T10:19:48.123Z").
#pragma once

#include <spdlog/spdlog.h>

#include <string>
#include <string_view>

namespace epd::log {

enum class Component { kRpc, kCore, kCpu, kCuda, kNccl, kIpc };

spdlog::logger& Get(Component component);
// Accepts trace, debug, info, warn, error, critical, off.
bool SetLevel(std::string_view level);
std::string_view LevelName();

// True when `journal_stream` ("DEV:INODE", systemd's JOURNAL_STREAM) names the file open on
// `fd`: only then does that fd lead to the journal (a child of a service may inherit the
// variable with a redirected stderr).
bool StreamIsJournal(const char* journal_stream, int fd);
// "journal" or "stderr": where this process logs.
std::string_view Destination();

}  // namespace epd::log

#define EPD_LOG(component, level, ...) \
  ::epd::log::Get(::epd::log::Component::component).level(__VA_ARGS__)
