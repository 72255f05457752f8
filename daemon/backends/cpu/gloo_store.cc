#include "daemon/backends/cpu/gloo_store.h"

#include <gloo/common/error.h>

#include <algorithm>
#include <thread>

#include "common/status.h"

namespace epd {

GlooStore::GlooStore(ClusterStore& cluster, std::string prefix, std::chrono::milliseconds timeout,
                     std::function<bool()> abandon)
    : cluster_(cluster), prefix_(std::move(prefix)), timeout_(timeout),
      abandon_(std::move(abandon)) {}

void GlooStore::set(const std::string& key, const std::vector<char>& data) {
  Status status = cluster_.Set(prefix_ + key, std::string(data.begin(), data.end()));
  if (!status.ok()) throw gloo::IoException("cluster store set: " + status.ToString());
}

std::vector<char> GlooStore::get(const std::string& key) {
  // Like gloo's own stores, get waits (bounded) for a key another rank has yet to set.
  wait({key});
  auto value = cluster_.Get(prefix_ + key);
  if (!value.ok()) throw gloo::IoException("cluster store get: " + value.status().ToString());
  if (!value->has_value()) throw gloo::IoException("cluster store: key " + key + " is not set");
  return std::vector<char>((*value)->begin(), (*value)->end());
}

void GlooStore::wait(const std::vector<std::string>& keys) { wait(keys, timeout_); }

void GlooStore::wait(const std::vector<std::string>& keys,
                     const std::chrono::milliseconds& timeout) {
  const auto deadline = std::chrono::steady_clock::now() + std::min(timeout, timeout_);
  auto pause = std::chrono::milliseconds(1);
  for (const std::string& key : keys) {
    for (;;) {
      auto value = cluster_.Get(prefix_ + key);
      if (!value.ok()) throw gloo::IoException("cluster store get: " + value.status().ToString());
      if (value->has_value()) break;
      if (abandon_ && abandon_()) throw gloo::IoException("rendezvous abandoned: generation moved");
      if (std::chrono::steady_clock::now() + pause > deadline) {
        throw gloo::IoException("rendezvous timed out waiting for " + key);
      }
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::milliseconds(50));
    }
  }
}

}  // namespace epd
