#include "daemon/core/name_rules.h"

namespace epd {

Status ValidatePrintableName(std::string_view name, std::string_view field, size_t max_bytes) {
  if (name.size() > max_bytes) {
    return InvalidArgumentError("{} has {} bytes; at most {} are allowed", field, name.size(),
                                max_bytes);
  }
  for (size_t i = 0; i < name.size(); ++i) {
    const auto c = static_cast<unsigned char>(name[i]);
    if (c < 0x20 || c == 0x7f) {
      return InvalidArgumentError("{} has the control character 0x{:02x} at byte {}", field, c,
                                  i);
    }
  }
  return OkStatus();
}

}  // namespace epd
