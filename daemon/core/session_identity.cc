#include "daemon/core/session_identity.h"

#include <sys/random.h>

#include <cerrno>
#include <cstring>

#include "daemon/core/engine.h"

namespace epd {

StatusOr<uint64_t> RandomSessionId() {
  uint64_t id = 0;
  auto* bytes = reinterpret_cast<char*>(&id);
  size_t filled = 0;
  while (filled < sizeof(id)) {
    const ssize_t got = getrandom(bytes + filled, sizeof(id) - filled, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      return UnavailableError("getrandom failed: {}", std::strerror(errno));
    }
    filled += static_cast<size_t>(got);
  }
  return id;
}

bool SamePeer(const SessionPeer& owner, const SessionPeer& caller) {
  return owner.pid == caller.pid && owner.uid == caller.uid;
}

}  // namespace epd
