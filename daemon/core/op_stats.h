// Op counters as atomics: every finished op adds to them from its worker or completion thread
// without taking any engine lock; Stats() reads a snapshot.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

#include "daemon/core/engine.h"

namespace epd {

enum class OpKind { kUpdate, kDispatch, kCombine };
std::string_view OpKindName(OpKind kind);  // "update", "dispatch", "combine"

class AtomicOpCounters {
 public:
  void Add(bool ok, std::chrono::microseconds time) {
    (ok ? completed_ : failed_).fetch_add(1, std::memory_order_relaxed);
    total_us_.fetch_add(static_cast<uint64_t>(time.count()), std::memory_order_relaxed);
  }
  OpCounters Load() const {
    return OpCounters{completed_.load(std::memory_order_relaxed),
                      failed_.load(std::memory_order_relaxed),
                      total_us_.load(std::memory_order_relaxed)};
  }

 private:
  std::atomic<uint64_t> completed_{0}, failed_{0}, total_us_{0};
};

class OpStats {
 public:
  AtomicOpCounters& For(OpKind kind) {
    switch (kind) {
      case OpKind::kDispatch:
        return dispatch_;
      case OpKind::kCombine:
        return combine_;
      case OpKind::kUpdate:
        break;
    }
    return update_;
  }
  // Fills the op counters of `stats`.
  void Load(EngineStats& stats) const {
    stats.update = update_.Load();
    stats.dispatch = dispatch_.Load();
    stats.combine = combine_.Load();
  }

 private:
  AtomicOpCounters update_, dispatch_, combine_;
};

inline std::string_view OpKindName(OpKind kind) {
  switch (kind) {
    case OpKind::kDispatch:
      return "dispatch";
    case OpKind::kCombine:
      return "combine";
    case OpKind::kUpdate:
      break;
  }
  return "update";
}

}  // namespace epd
