#include "daemon/app/systemd_notifier.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>

#include "daemon/core/log.h"

#ifdef EPD_WITH_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

namespace epd::app {
namespace {

// STATUS= refreshes this often when no watchdog asks for more.
constexpr std::chrono::seconds kStatusPeriod{5};

void Send(const std::string& state) {
#ifdef EPD_WITH_SYSTEMD
  sd_notify(0, state.c_str());
#else
  (void)state;
#endif
}

}  // namespace

SystemdNotifier::SystemdNotifier(Engine& engine, std::chrono::milliseconds liveness_limit)
    : engine_(engine), liveness_limit_(liveness_limit) {
#ifdef EPD_WITH_SYSTEMD
  const char* socket = std::getenv("NOTIFY_SOCKET");
  enabled_ = socket != nullptr && *socket != '\0';
  uint64_t usec = 0;
  if (enabled_ && sd_watchdog_enabled(0, &usec) > 0) {
    watchdog_period_ = std::chrono::microseconds(usec / 2);
  }
#endif
}

SystemdNotifier::~SystemdNotifier() { StopSupervisor(); }

std::string SystemdNotifier::StatusLine(const Engine& engine) {
  const auto groups = engine.ListGroups();
  const auto persistent =
      std::count_if(groups.begin(), groups.end(), [](const auto& g) { return g.persistent; });
  return fmt::format("{} sessions, {} groups ({} persistent){}", engine.ListSessions().size(),
                     groups.size(), persistent, SpanningStatus(groups));
}

std::string SystemdNotifier::SpanningStatus(const std::vector<GroupSummary>& groups) {
  constexpr size_t kReasonChars = 160;
  int spanning = 0, formed = 0;
  const GroupSummary* failing = nullptr;
  for (const GroupSummary& group : groups) {
    if (group.transport.empty()) continue;
    ++spanning;
    const bool all_formed = std::all_of(group.transport.begin(), group.transport.end(),
                                        [](const RankTransportState& rank) { return rank.formed; });
    if (all_formed) {
      ++formed;
    } else if (failing == nullptr &&
               std::any_of(group.transport.begin(), group.transport.end(),
                           [](const RankTransportState& rank) { return rank.failures > 0; })) {
      failing = &group;
    }
  }
  if (spanning == 0) return "";
  std::string line = fmt::format(", spanning groups {} of {} formed", formed, spanning);
  if (failing != nullptr) {
    // The latest failure among its ranks: the one an engineer acts on.
    const RankTransportState* latest = &failing->transport.front();
    for (const RankTransportState& rank : failing->transport) {
      if (rank.last_failure_at > latest->last_failure_at) latest = &rank;
    }
    line += fmt::format("; '{}': {}", failing->config.name,
                        latest->last_failure.substr(0, kReasonChars));
  }
  return line;
}

void SystemdNotifier::Ready() {
  if (!enabled_) return;
  Send("READY=1\nSTATUS=serving: " + StatusLine(engine_));
  if (watchdog_period_.count() > 0) {
    EPD_LOG(kRpc, info, "systemd watchdog: liveness pings every {} ms (threads hung beyond {} ms "
            "stop them)", watchdog_period_.count() / 1000, liveness_limit_.count());
  }
  supervisor_ = std::thread([this] { Supervise(); });
}

void SystemdNotifier::Stopping() {
  StopSupervisor();
  if (enabled_) Send("STOPPING=1\nSTATUS=draining");
}

void SystemdNotifier::StopSupervisor() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  if (supervisor_.joinable()) supervisor_.join();
}

void SystemdNotifier::Supervise() {
  const auto period = watchdog_period_.count() > 0
                          ? std::min<std::chrono::microseconds>(watchdog_period_, kStatusPeriod)
                          : std::chrono::microseconds(kStatusPeriod);
  std::string last_status;
  bool was_live = true;
  std::unique_lock lock(mutex_);
  while (!wake_.wait_for(lock, period, [this] { return stop_; })) {
    lock.unlock();
    Status live = engine_.CheckLiveness(liveness_limit_);
    std::string state;
    if (live.ok()) {
      if (watchdog_period_.count() > 0) state = "WATCHDOG=1\n";
      if (!was_live) EPD_LOG(kRpc, info, "liveness restored");
      state += "STATUS=serving: " + StatusLine(engine_);
    } else {
      // No WATCHDOG=1: systemd restarts us once WatchdogSec passes without one.
      if (was_live) EPD_LOG(kRpc, error, "liveness check failed: {}", live.message());
      state = "STATUS=unhealthy: " + std::string(live.message());
    }
    was_live = live.ok();
    if (state != last_status || watchdog_period_.count() > 0) Send(state);
    last_status = state;
    lock.lock();
  }
}

}  // namespace epd::app
