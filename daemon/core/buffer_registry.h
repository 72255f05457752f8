// Per-session table of registered memory. Every TensorRef of every op is resolved here and
// checked against the registered bounds, so a bad offset or shape is a request error and
// never a wild read or write.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string_view>

#include "daemon/core/backend.h"
#include "daemon/core/engine.h"

namespace epd {

// Token and index tensors must start on a 16-byte boundary: the device copies rows in 16-byte
// vectors and a misaligned tensor would fault instead of failing cleanly.
constexpr uint64_t kTensorAlignment = 16;

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

  // Resolves `ref` (named `field` in errors) into a view of registered memory.
  StatusOr<TensorView> Resolve(const TensorRef& ref, std::string_view field) const;

 private:
  std::map<ObjectId, std::shared_ptr<Memory>> buffers_;
};

// Checks a resolved tensor against what an op expects; -1 in `shape` accepts any extent.
Status ExpectDType(const TensorView& view, std::string_view field, DType expected);
Status ExpectShape(const TensorView& view, std::string_view field,
                   std::initializer_list<int64_t> shape,
                   std::initializer_list<std::string_view> dim_names);

}  // namespace epd
