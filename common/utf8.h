// Cutting text between UTF-8 characters, where a long message is shortened (an answer's
// bound, an earlier failure named inside a later one): a cut inside a character would hand
// clients invalid UTF-8.
#pragma once

#include <cstddef>
#include <string_view>

namespace epd {

inline bool IsUtf8Continuation(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

// The largest index <= i where a character of `text` starts (i < text.size()).
inline size_t Utf8StartAtOrBefore(std::string_view text, size_t i) {
  while (i > 0 && IsUtf8Continuation(text[i])) --i;
  return i;
}

// The smallest index >= i where a character of `text` starts, or text.size().
inline size_t Utf8StartAtOrAfter(std::string_view text, size_t i) {
  while (i < text.size() && IsUtf8Continuation(text[i])) ++i;
  return i;
}

}  // namespace epd
