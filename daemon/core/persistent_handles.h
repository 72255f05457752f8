// PersistentHandles: handles that outlive their session, by (name, node rank). A frontend
// that restarts attaches to them instead of allocating again.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/core/control_worker.h"
#include "daemon/core/handle_state.h"

namespace epd {

class PersistentHandles {
 public:
  bool Contains(std::string_view name, int node_rank) const;
  // ALREADY_EXISTS when the name is taken on that rank (also by a concurrent create).
  Status Add(const std::shared_ptr<Handle>& handle);
  std::shared_ptr<Handle> Find(std::string_view name, int node_rank) const;
  // Removes the entry if it still is `handle`.
  void Remove(const Handle& handle);
  Released TakeAll();
  std::vector<std::shared_ptr<Handle>> All() const;

 private:
  static std::string Key(std::string_view name, int node_rank);

  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<Handle>> handles_;
};

}  // namespace epd
