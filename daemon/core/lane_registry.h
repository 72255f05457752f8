// LaneRegistry: owner of a backend's execution lanes. A lane is the stream one (group, node
// rank) runs its ops on (cpu: a thread; cuda: a CUDA stream and the completion thread that
// waits for it), so ops of different groups never wait behind each other (docs/design.md,
// threading model). A group creates its lanes with its handles and retires them when it is
// destroyed; the registry keeps every lane so the backend can probe them all and drain them
// all at shutdown.
//
// NOTE: a lane's thread may drop the last reference to a group (a completion releasing an
// op's handle or session): its own lane's, or through a session even another group's. A
// thread cannot join itself, and two lanes joining each other would deadlock, so a lane
// retired on any lane's thread is parked, and parked lanes are destroyed by the next call
// made off the lanes' threads (Add and Retire from the control thread, DrainAll).
//
// `Lane` provides `bool OnThread() const` (true on the lane's thread). Thread-safe.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

namespace epd {

template <typename Lane>
class LaneRegistry {
 public:
  LaneRegistry() = default;
  ~LaneRegistry() { DrainAll(); }
  LaneRegistry(const LaneRegistry&) = delete;
  LaneRegistry& operator=(const LaneRegistry&) = delete;

  // Takes ownership of `lane` until it is retired; destroys lanes parked so far.
  Lane* Add(std::unique_ptr<Lane> lane) {
    Lane* added = lane.get();
    {
      std::lock_guard lock(mutex_);
      live_.emplace(added, std::move(lane));
    }
    DestroyParked();
    return added;
  }

  // The lane's group is gone: the lane finishes what is queued on it and is destroyed, now
  // or (called on a lane's thread) by a later call. A lane the registry no longer holds
  // (being drained) is left to whoever took it.
  void Retire(Lane* lane) {
    {
      std::lock_guard lock(mutex_);
      auto it = live_.find(lane);
      if (it == live_.end()) return;
      parked_.push_back(std::move(it->second));
      live_.erase(it);
    }
    DestroyParked();
  }

  // Calls `visit` for every lane not yet destroyed, under the registry's lock.
  void ForEach(const std::function<void(const Lane&)>& visit) const {
    std::lock_guard lock(mutex_);
    for (const auto& [lane, owned] : live_) visit(*owned);
    for (const auto& owned : parked_) visit(*owned);
  }

  size_t live() const {
    std::lock_guard lock(mutex_);
    return live_.size();
  }

  // Destroys every lane, each after it ran what is queued on it. A lane's last completions
  // may destroy groups, which retire lanes: those are already taken and are left alone.
  // Called on a lane's thread it does nothing (nothing may be joined from there).
  void DrainAll() {
    for (;;) {
      std::vector<std::unique_ptr<Lane>> all;
      {
        std::lock_guard lock(mutex_);
        if (OnALaneLocked() || (live_.empty() && parked_.empty())) return;
        all.swap(parked_);
        for (auto& [lane, owned] : live_) all.push_back(std::move(owned));
        live_.clear();
      }
      all.clear();  // joins each lane after its queue
    }
  }

 private:
  bool OnALaneLocked() const {
    for (const auto& [lane, owned] : live_) {
      if (owned->OnThread()) return true;
    }
    for (const auto& owned : parked_) {
      if (owned->OnThread()) return true;
    }
    return false;
  }

  // Destroys the parked lanes unless the caller is a lane's thread.
  void DestroyParked() {
    std::vector<std::unique_ptr<Lane>> parked;
    {
      std::lock_guard lock(mutex_);
      if (OnALaneLocked()) return;
      parked.swap(parked_);
    }
    parked.clear();
  }

  mutable std::mutex mutex_;
  std::map<const Lane*, std::unique_ptr<Lane>> live_;
  std::vector<std::unique_ptr<Lane>> parked_;  // retired, not yet destroyed
};

}  // namespace epd
