// Byte alignment of the buffers that daemon and frontends lay out back to back (handle
// regions, the example frontend's tensors).
#pragma once

#include <cstddef>

namespace epd {

inline constexpr size_t kBufferAlignment = 256;

inline constexpr size_t AlignUp(size_t value, size_t alignment = kBufferAlignment) {
  return (value + alignment - 1) / alignment * alignment;
}

}  // namespace epd
