// LaneRegistry: owner of a backend's execution lanes. A lane is the stream one (group, node
// rank) runs its ops on (cpu: a thread; cuda: a CUDA stream and the completion thread that
// waits for it), so ops of different groups never wait behind each other (docs/design.md,
// threading model). A group creates its lanes with its handles and retires them when it is
// destroyed; the registry keeps every lane so the backend can probe them all and drain them
// all at shutdown.
//
// NOTE: a lane's own thread may drop the last reference to the lane's group (a completion
// releasing an op's handle). Joining a thread from itself is impossible, so a lane retired
// on its own thread is parked and destroyed at the next Add() or at the registry's end.
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

  // Takes ownership of `lane` until it is retired; destroys lanes parked since the last Add.
  Lane* Add(std::unique_ptr<Lane> lane) {
    std::vector<std::unique_ptr<Lane>> parked;
    Lane* added = lane.get();
    {
      std::lock_guard lock(mutex_);
      parked.swap(parked_);
      live_.emplace(added, std::move(lane));
    }
    DestroyOffThread(parked);
    return added;
  }

  // The lane's group is gone: the lane finishes what is queued on it and is destroyed now, or
  // later when called on the lane's own thread. A lane the registry no longer holds (being
  // drained) is left to whoever took it.
  void Retire(Lane* lane) {
    std::unique_ptr<Lane> owned;
    {
      std::lock_guard lock(mutex_);
      auto it = live_.find(lane);
      if (it == live_.end()) return;
      owned = std::move(it->second);
      live_.erase(it);
      if (owned->OnThread()) {
        parked_.push_back(std::move(owned));
        return;
      }
    }
    owned.reset();
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
  void DrainAll() {
    for (;;) {
      std::vector<std::unique_ptr<Lane>> all;
      {
        std::lock_guard lock(mutex_);
        if (live_.empty() && parked_.empty()) return;
        all.swap(parked_);
        for (auto& [lane, owned] : live_) all.push_back(std::move(owned));
        live_.clear();
      }
      // Only lanes of the calling thread left: they cannot be joined from here.
      if (DestroyOffThread(all) == 0) return;
    }
  }

 private:
  // A parked lane whose thread is the caller's stays parked (it is still running the task
  // that retired it). Returns how many were destroyed.
  size_t DestroyOffThread(std::vector<std::unique_ptr<Lane>>& lanes) {
    size_t destroyed = 0;
    for (auto& lane : lanes) {
      if (lane->OnThread()) {
        std::lock_guard lock(mutex_);
        parked_.push_back(std::move(lane));
      } else {
        lane.reset();
        ++destroyed;
      }
    }
    lanes.clear();
    return destroyed;
  }

  mutable std::mutex mutex_;
  std::map<const Lane*, std::unique_ptr<Lane>> live_;
  std::vector<std::unique_ptr<Lane>> parked_;  // retired on their own thread
};

}  // namespace epd
