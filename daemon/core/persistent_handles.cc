#include "daemon/core/persistent_handles.h"

#include <fmt/format.h>

namespace epd {

std::string PersistentHandles::Key(std::string_view name, int node_rank) {
  return fmt::format("{}@{}", name, node_rank);
}

bool PersistentHandles::Contains(std::string_view name, int node_rank) const {
  return Find(name, node_rank) != nullptr;
}

Status PersistentHandles::Add(const std::shared_ptr<Handle>& handle) {
  std::lock_guard lock(mutex_);
  auto [it, inserted] = handles_.emplace(Key(handle->name, handle->node_rank), handle);
  if (!inserted) {
    return AlreadyExistsError("handle '{}' of rank {} already exists: use AttachHandle",
                              handle->name, handle->node_rank);
  }
  return OkStatus();
}

std::shared_ptr<Handle> PersistentHandles::Find(std::string_view name, int node_rank) const {
  std::lock_guard lock(mutex_);
  auto it = handles_.find(Key(name, node_rank));
  return it == handles_.end() ? nullptr : it->second;
}

void PersistentHandles::Remove(const Handle& handle) {
  std::lock_guard lock(mutex_);
  auto it = handles_.find(Key(handle.name, handle.node_rank));
  if (it != handles_.end() && it->second.get() == &handle) handles_.erase(it);
}

std::vector<std::shared_ptr<Handle>> PersistentHandles::All() const {
  std::lock_guard lock(mutex_);
  std::vector<std::shared_ptr<Handle>> out;
  for (const auto& [key, handle] : handles_) out.push_back(handle);
  return out;
}

Released PersistentHandles::TakeAll() {
  std::lock_guard lock(mutex_);
  Released out;
  for (auto& [key, handle] : handles_) out.push_back(std::move(handle));
  handles_.clear();
  return out;
}

}  // namespace epd
