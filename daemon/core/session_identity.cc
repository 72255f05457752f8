#include "daemon/core/session_identity.h"

#include <sys/random.h>

#include <cerrno>
#include <cstring>

#include "daemon/core/engine.h"

namespace epd {
namespace {

StatusOr<uint64_t> RandomBits64(std::string_view what) {
  uint64_t value = 0;
  auto* bytes = reinterpret_cast<char*>(&value);
  size_t filled = 0;
  while (filled < sizeof(value)) {
    const ssize_t got = getrandom(bytes + filled, sizeof(value) - filled, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      return UnavailableError("getrandom failed for a {}: {}", what, std::strerror(errno));
    }
    filled += static_cast<size_t>(got);
  }
  return value;
}

}  // namespace

StatusOr<uint64_t> RandomSessionId() { return RandomBits64("session id"); }

StatusOr<SessionSecret> RandomSessionSecret() { return RandomBits64("session secret"); }

bool SamePeer(const SessionPeer& owner, const SessionPeer& caller) {
  return owner.pid == caller.pid && owner.uid == caller.uid;
}

bool HoldsSessionCredential(const SessionPeer& owner, SessionSecret secret,
                            const SessionPeer& caller, SessionSecret presented) {
  const bool same_peer = SamePeer(owner, caller);
  const bool same_secret = SessionSecretsEqual(secret, presented);
  return same_peer & same_secret;  // NOTE: `&`, not `&&`: both parts are always evaluated
}

}  // namespace epd
