#include "daemon/backends/cuda/memory_device.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

namespace epd::cuda {

StatusOr<int> SourceDevice(const MemorySource& source, const std::vector<std::string>& gpu_uuids) {
  if (source.device_uuid.empty()) return source.device;
  const auto it = std::find(gpu_uuids.begin(), gpu_uuids.end(), source.device_uuid);
  if (it == gpu_uuids.end()) {
    return InvalidArgumentError(
        "memory source device_uuid '{}' is not a GPU of this daemon (its GPUs: {})",
        source.device_uuid, fmt::join(gpu_uuids, ", "));
  }
  return static_cast<int>(it - gpu_uuids.begin());
}

}  // namespace epd::cuda
