// SIGHUP: what a re-read config may change in a running daemon. Only the log level applies
// at runtime; every other key that differs needs a restart and is reported as ignored.
#pragma once

#include <string>
#include <vector>

#include "daemon/core/daemon_config.h"

namespace epd::app {

struct ReloadPlan {
  std::string log_level;             // to apply (may equal the running one)
  std::vector<std::string> ignored;  // keys whose new value needs a restart
};

ReloadPlan PlanReload(const DaemonConfig& running, const DaemonConfig& fresh);

}  // namespace epd::app
