// Counts every allocation and free a backend makes, so tests can assert that UpdateHandle,
// Dispatch and Combine never allocate (docs/design.md §2: all buffers come from CreateHandle).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace epd {

class AllocationCounter {
 public:
  void OnAllocate(size_t bytes) {
    allocations_.fetch_add(1, std::memory_order_relaxed);
    live_bytes_.fetch_add(bytes, std::memory_order_relaxed);
  }
  void OnFree(size_t bytes) {
    frees_.fetch_add(1, std::memory_order_relaxed);
    live_bytes_.fetch_sub(bytes, std::memory_order_relaxed);
  }
  uint64_t allocations() const { return allocations_.load(std::memory_order_relaxed); }
  uint64_t frees() const { return frees_.load(std::memory_order_relaxed); }
  int64_t live_bytes() const { return live_bytes_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> allocations_{0};
  std::atomic<uint64_t> frees_{0};
  std::atomic<int64_t> live_bytes_{0};
};

}  // namespace epd
