#include "daemon/core/session_limits.h"

namespace epd {

Status CheckLimit(uint64_t held, uint64_t adding, uint64_t limit, std::string_view what,
                  std::string_view config_key) {
  if (adding <= limit && held <= limit - adding) return OkStatus();
  return ResourceExhaustedError("{} {} held, {} more would exceed the limit of {} ({})", held,
                                what, adding, limit, config_key);
}

}  // namespace epd
