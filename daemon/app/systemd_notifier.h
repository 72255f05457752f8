// SystemdNotifier: the daemon's side of Type=notify. READY=1 and STOPPING=1 at the state
// changes; while serving, a supervisor thread sends STATUS= (sessions, groups, spanning groups
// formed) and, when the unit sets WatchdogSec=, WATCHDOG=1 every half period, but only while
// Engine::CheckLiveness finds every rank worker and backend thread idle or progressing. A hung
// thread stops the pings, so systemd kills and restarts the daemon (WatchdogSignal,
// Restart=on-failure).
//
// Without NOTIFY_SOCKET (not started by systemd) or without libsystemd, nothing is sent and
// no thread runs.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "daemon/core/engine.h"

namespace epd::app {

class SystemdNotifier {
 public:
  // `liveness_limit`: how long one op may keep a thread busy before it counts as hung.
  SystemdNotifier(Engine& engine, std::chrono::milliseconds liveness_limit);
  ~SystemdNotifier();  // stops the supervisor thread
  SystemdNotifier(const SystemdNotifier&) = delete;
  SystemdNotifier& operator=(const SystemdNotifier&) = delete;

  void Ready();     // READY=1 with the first STATUS=, then starts the supervisor
  void Stopping();  // STOPPING=1; stops the supervisor

  // "3 sessions, 2 groups (1 persistent)", then SpanningStatus of the groups.
  static std::string StatusLine(const Engine& engine);
  // "" without groups that span daemons; else ", spanning groups 1 of 2 formed" and, for the
  // first one not formed that failed, "; 'g': <its last failure>" (cut to 160 characters), so
  // `systemctl status epd` says which spanning group is down and why.
  static std::string SpanningStatus(const std::vector<GroupSummary>& groups);

 private:
  void Supervise();
  void StopSupervisor();

  Engine& engine_;
  const std::chrono::milliseconds liveness_limit_;
  std::chrono::microseconds watchdog_period_{0};  // 0: WatchdogSec= not set
  bool enabled_ = false;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::thread supervisor_;
};

}  // namespace epd::app
