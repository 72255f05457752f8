// Creating what the daemon serves: the backend the config asks for and the config file's
// persistent groups and named handles.
#pragma once

#include <functional>
#include <memory>

#include "common/status.h"
#include "daemon/core/backend.h"
#include "daemon/core/daemon_config.h"
#include "daemon/core/engine.h"

namespace epd::app {

// `fatal_signal` is raised in this process when the backend hits a fatal device error (the
// main thread then stops with exit code 1, so systemd restarts the daemon).
// Multi-node: joining the deployment needs the node's rank count, which the backend knows.
struct ClusterAttachment {
  std::shared_ptr<ClusterStore> store;  // null when the daemon runs alone
};
using JoinCluster = std::function<StatusOr<ClusterAttachment>(int ranks_per_node)>;

// `join` (may be empty) is called once the rank count is known and before the backend serves
// anything; what it returned is left in `joined`.
StatusOr<std::unique_ptr<Backend>> CreateBackend(const DaemonConfig& config, int fatal_signal,
                                                 const JoinCluster& join = {},
                                                 ClusterAttachment* joined = nullptr);

// A failure that a restart cannot fix (exit 2, which systemd does not restart): a bad value,
// a persistent object the node cannot hold, a socket path that cannot be used.
bool IsConfigProblem(const Status& status);

// Creates the config file's persistent groups and their named handles.
Status CreatePersistentObjects(Engine& engine, const DaemonConfig& config);

}  // namespace epd::app
