// Layout of a fence page shared through IPC / shared memory (docs/design.md §6). Versioned: a
// change of layout is a new kFenceVersion, which clients refuse until they know it.
#pragma once

#include <cstdint>

namespace epd {

struct FencePageHeader {
  uint32_t magic;           // kFenceMagic
  uint32_t version;         // kFenceVersion
  uint32_t header_bytes;    // sizeof(FencePageHeader)
  uint32_t counter_offset;  // byte offset of the uint64 counter inside the page
};

constexpr uint32_t kFenceMagic = 0x46445045;  // "EPDF" little-endian
constexpr uint32_t kFenceVersion = 1;
constexpr uint32_t kFenceCounterOffset = 64;  // own cache line, away from the header
constexpr uint32_t kFencePageBytes = 4096;

inline FencePageHeader MakeFencePageHeader() {
  return FencePageHeader{kFenceMagic, kFenceVersion, sizeof(FencePageHeader), kFenceCounterOffset};
}

}  // namespace epd
