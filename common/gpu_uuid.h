// A GPU's UUID in nvidia-smi's form ("GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"): how the daemon
// reports its GPUs and how a frontend names the GPU of memory it registers, since CUDA device
// indices differ between processes (CUDA_VISIBLE_DEVICES, containers) and UUIDs do not.
#pragma once

#include <fmt/format.h>

#include <string>

namespace epd {

// `bytes`: cudaUUID_t::bytes (char[16]), taken as it is so that no caller converts it.
inline std::string FormatGpuUuid(const char (&bytes)[16]) {
  const auto* b = reinterpret_cast<const unsigned char*>(bytes);
  return fmt::format(
      "GPU-{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}"
      "{:02x}{:02x}",
      b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
      b[15]);
}

}  // namespace epd
