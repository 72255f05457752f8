// Session ids that cannot be guessed and the rule that binds a session to its peer.
#pragma once

#include <cstdint>

#include "common/status.h"

namespace epd {

struct SessionPeer;

// 64 bits from the kernel's CSPRNG (getrandom): unlike a seeded PRNG, earlier ids say
// nothing about later ones. UNAVAILABLE if the kernel cannot supply randomness.
StatusOr<uint64_t> RandomSessionId();

// Whether `caller` may use a session opened by `owner`: the same process (pid and uid). Peers
// of unknown identity (TCP, in-process tests) only match each other.
bool SamePeer(const SessionPeer& owner, const SessionPeer& caller);

}  // namespace epd
