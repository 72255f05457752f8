// The session secret: the half of a session's credential that a caller must present.
//
// A session is named by its id (public: ListSessions shows it) and its secret, 64 bits from
// the daemon's CSPRNG that only the opener learns (OpenSessionResponse.session_secret). Every
// unary call that names a session carries the secret in one gRPC metadata header, as 16 hex
// digits; the daemon also checks that the caller is the process that opened the session.
// Shared by the daemon (which checks) and the client library (which sends).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace epd {

using SessionSecret = uint64_t;

// gRPC metadata keys are lowercase ASCII.
inline constexpr std::string_view kSessionSecretHeader = "epd-session-secret";
inline constexpr size_t kSessionSecretDigits = 16;

// 16 lowercase hex digits, zero-padded: the form OpenSessionResponse carries.
std::string FormatSessionSecret(SessionSecret secret);

// Exactly 16 hex digits (either case); nullopt for anything else (empty, short, long, a
// prefix such as "0x", other characters). Takes the same time for every 16-character input.
std::optional<SessionSecret> ParseSessionSecret(std::string_view text);

// Whether two secrets are equal, in time independent of where they differ.
bool SessionSecretsEqual(SessionSecret a, SessionSecret b);

}  // namespace epd
