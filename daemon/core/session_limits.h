// What one session may hold, so that one client cannot exhaust the daemon for everyone
// (vm.max_map_count, address space, /dev/shm, device memory). Each limit has a config key
// under [limits] (daemon_config.h); exceeding it answers RESOURCE_EXHAUSTED naming both.
#pragma once

#include <cstdint>
#include <string_view>

#include "common/status.h"

namespace epd {

struct SessionLimits {
  uint64_t buffers = 1024;                     // limits.buffers_per_session
  uint64_t mapped_bytes = uint64_t{64} << 30;  // limits.mapped_bytes_per_session
  uint64_t fences = 1024;                      // limits.fences_per_session
  uint64_t handles = 256;                      // limits.handles_per_session
  uint64_t groups = 64;                        // limits.groups_per_session
  uint64_t persistent_groups = 256;            // limits.persistent_groups (node-wide)
  // Sessions open at once on the node: a frontend stuck reconnecting without closing, or a
  // script opening sessions in a loop, meets RESOURCE_EXHAUSTED instead of growing the
  // daemon until the idle timeout catches up (a node runs a frontend per GPU plus tools).
  uint64_t sessions = 4096;  // limits.sessions (node-wide)
  // Ops accepted and not yet answered: bounds what one session can queue on its rank's
  // worker and lanes (a frontend posting ahead needs a few layers' worth).
  uint64_t ops_in_flight = 4096;  // limits.ops_in_flight_per_session
};

// RESOURCE_EXHAUSTED when `held + adding` exceeds `limit`; the message names what is held,
// the limit and its config key.
Status CheckLimit(uint64_t held, uint64_t adding, uint64_t limit, std::string_view what,
                  std::string_view config_key);

}  // namespace epd
