// Names clients choose: bounded, and free of control characters so that no name can forge or
// flood a log line.
#pragma once

#include <cstddef>
#include <string_view>

#include "common/status.h"

namespace epd {

inline constexpr size_t kMaxClientNameBytes = 128;
inline constexpr size_t kMaxHandleNameBytes = 128;  // as group and config handle names

// INVALID_ARGUMENT naming `field` when `name` is longer than `max_bytes` or holds a control
// character (< 0x20 or 0x7f).
Status ValidatePrintableName(std::string_view name, std::string_view field, size_t max_bytes);

}  // namespace epd
