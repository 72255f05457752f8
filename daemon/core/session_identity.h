// Session credentials that cannot be guessed and the rule that binds a session to its peer.
//
// A session's credential is its id, its secret (common/session_secret.h) and the process that
// opened it. The id is public (ListSessions shows it); the secret only the opener learns.
#pragma once

#include <cstdint>

#include "common/session_secret.h"
#include "common/status.h"

namespace epd {

struct SessionPeer;

// 64 bits from the kernel's CSPRNG (getrandom): unlike a seeded PRNG, earlier values say
// nothing about later ones. UNAVAILABLE if the kernel cannot supply randomness. Session ids
// and session secrets are drawn independently, so a session is named by 128 unguessable bits.
StatusOr<uint64_t> RandomSessionId();
StatusOr<SessionSecret> RandomSessionSecret();

// Whether `caller` may use a session opened by `owner`: the same process (pid and uid). Peers
// of unknown identity (TCP, in-process tests) only match each other.
bool SamePeer(const SessionPeer& owner, const SessionPeer& caller);

// Whether `caller`, presenting `presented`, holds the credential of a session that `owner`
// opened with `secret`: the same peer and the same secret. Both parts are always evaluated
// and the secret is compared in constant time, so neither the answer nor its timing tells
// which part failed.
bool HoldsSessionCredential(const SessionPeer& owner, SessionSecret secret,
                            const SessionPeer& caller, SessionSecret presented);

}  // namespace epd
