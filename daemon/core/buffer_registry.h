// Per-session table of registered memory. Every TensorRef of every op is resolved here and
// checked against the registered bounds, so a bad offset or shape is a request error and
// never a wild read or write.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string_view>
#include <vector>

#include "common/limits.h"
#include "daemon/core/backend.h"
#include "daemon/core/engine.h"
#include "daemon/core/op_validation.h"

namespace epd {

class BufferRegistry {
 public:
  void Add(ObjectId id, std::shared_ptr<Memory> memory) { buffers_[id] = std::move(memory); }
  Status Remove(ObjectId id);
  // Removes and returns the buffer, so the caller decides where its memory is released.
  StatusOr<std::shared_ptr<Memory>> Take(ObjectId id);
  std::shared_ptr<Memory> Find(ObjectId id) const;
  size_t size() const { return buffers_.size(); }
  uint64_t bytes() const {
    uint64_t total = 0;
    for (const auto& [id, memory] : buffers_) total += memory->size();
    return total;
  }
  void Clear() { buffers_.clear(); }
  // Empties the registry; the caller decides where the memory is released.
  std::vector<std::shared_ptr<Memory>> TakeAll() {
    std::vector<std::shared_ptr<Memory>> out;
    for (auto& [id, memory] : buffers_) out.push_back(std::move(memory));
    buffers_.clear();
    return out;
  }

  // Resolves `ref` (named `field` in errors) into a view of registered memory.
  StatusOr<TensorView> Resolve(const TensorRef& ref, std::string_view field) const;

 private:
  std::map<ObjectId, std::shared_ptr<Memory>> buffers_;
};

}  // namespace epd
