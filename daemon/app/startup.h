// Creating what the daemon serves: the backend the config asks for and the config file's
// persistent groups and named handles.
#pragma once

#include <memory>

#include "common/status.h"
#include "daemon/core/backend.h"
#include "daemon/core/daemon_config.h"
#include "daemon/core/engine.h"

namespace epd::app {

// `fatal_signal` is raised in this process when the backend hits a fatal device error (the
// main thread then stops with exit code 1, so systemd restarts the daemon).
StatusOr<std::unique_ptr<Backend>> CreateBackend(const DaemonConfig& config, int fatal_signal);

// A failure that a restart cannot fix (exit 2, which systemd does not restart): a bad value,
// a persistent object the node cannot hold, a socket path that cannot be used.
bool IsConfigProblem(const Status& status);

// Creates the config file's persistent groups and their named handles.
Status CreatePersistentObjects(Engine& engine, const DaemonConfig& config);

}  // namespace epd::app
