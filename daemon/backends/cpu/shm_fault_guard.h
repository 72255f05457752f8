// ShmFaultGuard: keeps a client that shrinks (ftruncate) a shared memory object from killing
// the daemon.
//
// Reading or writing a page of a MAP_SHARED mapping that lies beyond the end of its object
// raises SIGBUS. Every shm mapping of the cpu backend (a frontend's registered range, a handle
// region, a fence page) is registered here; the SIGBUS handler, for a fault inside a
// registered range, maps anonymous zero pages over the whole range (one mapping, so repeated
// faults cannot exhaust vm.max_map_count), marks the range broken and returns, so the access
// completes on harmless memory. The op that used the memory then fails with a clear error
// (Broken()), and so does every later op on it: the client must register it again. A SIGBUS
// outside every registered range restores the default action, so a real bug still crashes.
//
// The handler takes no lock: ranges live in a fixed table of atomics.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/status.h"

namespace epd {

class ShmFaultGuard {
 public:
  // Installs the SIGBUS handler once per process (idempotent).
  static Status Install();

  // Watches [data, data + bytes) (page aligned: a whole mapping). RESOURCE_EXHAUSTED when
  // the table is full. The returned slot is passed to Unwatch before the range is unmapped.
  static StatusOr<int> Watch(void* data, size_t bytes);
  static void Unwatch(int slot);

  // Whether the watched range in `slot` was truncated under the daemon since Watch.
  static bool Broken(int slot);
  // Whether any watched range overlapping [data, data + bytes) is broken.
  static bool BrokenAt(const void* data, size_t bytes);

  static constexpr int kCapacity = 1 << 16;
};

}  // namespace epd
