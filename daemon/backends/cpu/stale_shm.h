// Reclaims the handle, fence and group state objects a killed daemon left in /dev/shm.
//
// The daemon names its objects "/epd-<pid>-<salt>-<kind>-<n>" (kind: handle or fence of the
// cpu backend, group for the frontend-launched path's state pages).
// An object whose pid is no running epd daemon belongs to nobody: no live daemon maps it and
// frontends only reach it through one, so it is unlinked at startup. Objects of other live
// daemons on the node are left alone.
#pragma once

#include <sys/types.h>

#include <functional>
#include <string>

namespace epd {

// Whether `pid` is a running epd daemon (its /proc/<pid>/comm is "epd").
bool IsRunningDaemon(pid_t pid);

// Unlinks every daemon-made object in `directory` whose pid fails `is_running_daemon`;
// returns how many it removed.
int ReclaimStaleShm(const std::string& directory = "/dev/shm",
                    const std::function<bool(pid_t)>& is_running_daemon = IsRunningDaemon);

}  // namespace epd
