#include "common/session_secret.h"

#include <fmt/format.h>

namespace epd {

std::string FormatSessionSecret(SessionSecret secret) { return fmt::format("{:016x}", secret); }

std::optional<SessionSecret> ParseSessionSecret(std::string_view text) {
  if (text.size() != kSessionSecretDigits) return std::nullopt;
  SessionSecret value = 0;
  // NOTE: no early exit on a bad digit, so the time says nothing about where the input went
  // wrong (the length is the caller's own business).
  bool valid = true;
  for (char c : text) {
    uint64_t digit = 0;
    if (c >= '0' && c <= '9') {
      digit = static_cast<uint64_t>(c - '0');
    } else if (c >= 'a' && c <= 'f') {
      digit = static_cast<uint64_t>(c - 'a' + 10);
    } else if (c >= 'A' && c <= 'F') {
      digit = static_cast<uint64_t>(c - 'A' + 10);
    } else {
      valid = false;
    }
    value = (value << 4) | digit;
  }
  if (!valid) return std::nullopt;
  return value;
}

bool SessionSecretsEqual(SessionSecret a, SessionSecret b) {
  // Folds every differing bit into one without a data-dependent branch; `volatile` keeps the
  // compiler from turning the fold back into an early-exit comparison.
  volatile SessionSecret diff = a ^ b;
  SessionSecret folded = diff;
  folded |= folded >> 32;
  folded |= folded >> 16;
  folded |= folded >> 8;
  folded |= folded >> 4;
  folded |= folded >> 2;
  folded |= folded >> 1;
  return (folded & 1) == 0;
}

}  // namespace epd
