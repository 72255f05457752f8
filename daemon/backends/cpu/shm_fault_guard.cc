#include "daemon/backends/cpu/shm_fault_guard.h"

#include <signal.h>
#include <sys/mman.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>

namespace epd {
namespace {

struct Range {
  std::atomic<uintptr_t> begin{0};  // 0: free slot
  std::atomic<uintptr_t> end{0};
  std::atomic<bool> broken{false};
};

Range g_ranges[ShmFaultGuard::kCapacity];
std::atomic<int> g_high_water{0};  // slots at or above are free: bounds the handler's scan
std::mutex g_watch_mutex;          // serialises Watch/Unwatch; never taken by the handler

void OnSigbus(int signal, siginfo_t* info, void*) {
  const int saved_errno = errno;  // the interrupted code may be reading errno
  const auto address = reinterpret_cast<uintptr_t>(info->si_addr);
  const int limit = g_high_water.load(std::memory_order_acquire);
  for (int i = 0; i < limit; ++i) {
    Range& range = g_ranges[i];
    const uintptr_t begin = range.begin.load(std::memory_order_acquire);
    const uintptr_t end = range.end.load(std::memory_order_acquire);
    if (begin == 0 || address < begin || address >= end) continue;
    // NOTE: mmap is a plain system call; MAP_FIXED replaces the shared pages atomically.
    void* patched = mmap(reinterpret_cast<void*>(begin), end - begin, PROT_READ | PROT_WRITE,
                         MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (patched == MAP_FAILED) break;  // cannot recover: fall through to the default action
    range.broken.store(true, std::memory_order_release);
    errno = saved_errno;
    return;
  }
  struct sigaction fallback {};
  fallback.sa_handler = SIG_DFL;
  sigemptyset(&fallback.sa_mask);
  sigaction(signal, &fallback, nullptr);  // the faulting access repeats and kills the process
  errno = saved_errno;
}

}  // namespace

Status ShmFaultGuard::Install() {
  static const Status installed = [] {
    struct sigaction action {};
    action.sa_sigaction = OnSigbus;
    action.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGBUS, &action, nullptr) != 0) {
      return InternalError("sigaction(SIGBUS) failed: {}", std::strerror(errno));
    }
    return OkStatus();
  }();
  return installed;
}

StatusOr<int> ShmFaultGuard::Watch(void* data, size_t bytes) {
  EPD_RETURN_IF_ERROR(Install());
  std::lock_guard lock(g_watch_mutex);
  for (int i = 0; i < kCapacity; ++i) {
    Range& range = g_ranges[i];
    if (range.begin.load(std::memory_order_relaxed) != 0) continue;
    range.broken.store(false, std::memory_order_relaxed);
    range.end.store(reinterpret_cast<uintptr_t>(data) + bytes, std::memory_order_relaxed);
    range.begin.store(reinterpret_cast<uintptr_t>(data), std::memory_order_release);
    if (i >= g_high_water.load(std::memory_order_relaxed)) {
      g_high_water.store(i + 1, std::memory_order_release);
    }
    return i;
  }
  return ResourceExhaustedError("the daemon maps {} shared memory ranges already", kCapacity);
}

void ShmFaultGuard::Unwatch(int slot) {
  if (slot < 0 || slot >= kCapacity) return;
  std::lock_guard lock(g_watch_mutex);
  g_ranges[slot].begin.store(0, std::memory_order_release);
  g_ranges[slot].end.store(0, std::memory_order_release);
}

bool ShmFaultGuard::Broken(int slot) {
  if (slot < 0 || slot >= kCapacity) return false;
  return g_ranges[slot].broken.load(std::memory_order_acquire);
}

bool ShmFaultGuard::BrokenAt(const void* data, size_t bytes) {
  const auto begin = reinterpret_cast<uintptr_t>(data);
  const uintptr_t end = begin + bytes;
  const int limit = g_high_water.load(std::memory_order_acquire);
  for (int i = 0; i < limit; ++i) {
    const Range& range = g_ranges[i];
    const uintptr_t range_begin = range.begin.load(std::memory_order_acquire);
    if (range_begin == 0 || !range.broken.load(std::memory_order_acquire)) continue;
    if (begin < range.end.load(std::memory_order_acquire) && range_begin < end) return true;
  }
  return false;
}

}  // namespace epd
