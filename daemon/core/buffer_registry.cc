#include "daemon/core/buffer_registry.h"

#include <fmt/ranges.h>

#include <limits>

namespace epd {

Status BufferRegistry::Remove(ObjectId id) { return Take(id).status(); }

StatusOr<std::shared_ptr<Memory>> BufferRegistry::Take(ObjectId id) {
  auto it = buffers_.find(id);
  if (it == buffers_.end()) {
    return NotFoundError("buffer_id = {} is not a buffer of this session", id);
  }
  std::shared_ptr<Memory> memory = std::move(it->second);
  buffers_.erase(it);
  return memory;
}

std::shared_ptr<Memory> BufferRegistry::Find(ObjectId id) const {
  auto it = buffers_.find(id);
  return it == buffers_.end() ? nullptr : it->second;
}

StatusOr<TensorView> BufferRegistry::Resolve(const TensorRef& ref, std::string_view field) const {
  std::shared_ptr<Memory> memory = Find(ref.buffer_id);
  if (memory == nullptr) {
    return NotFoundError("{}.buffer_id = {} is not a buffer of this session", field, ref.buffer_id);
  }
  if (ref.shape.empty()) return InvalidArgumentError("{}.shape must not be empty", field);
  uint64_t elements = 1;
  for (int64_t extent : ref.shape) {
    if (extent < 0) {
      return InvalidArgumentError("{}.shape = [{}] has a negative extent", field,
                                  fmt::join(ref.shape, ", "));
    }
    if (extent != 0 && elements > std::numeric_limits<uint64_t>::max() / 16 / extent) {
      return InvalidArgumentError("{}.shape = [{}] is too large", field,
                                  fmt::join(ref.shape, ", "));
    }
    elements *= static_cast<uint64_t>(extent);
  }
  const uint64_t bytes = elements * DTypeSize(ref.dtype);
  if (ref.offset_bytes % kTensorAlignment != 0) {
    return InvalidArgumentError("{}.offset_bytes = {} is not a multiple of {}", field,
                                ref.offset_bytes, kTensorAlignment);
  }
  if (ref.offset_bytes > memory->size() || bytes > memory->size() - ref.offset_bytes) {
    return InvalidArgumentError(
        "{} (buffer {}, offset_bytes = {}, {} bytes) lies outside the buffer's {} bytes", field,
        ref.buffer_id, ref.offset_bytes, bytes, memory->size());
  }
  TensorView view;
  view.data = static_cast<char*>(memory->data()) + ref.offset_bytes;
  view.dtype = ref.dtype;
  view.shape = ref.shape;
  return view;
}

Status ExpectDType(const TensorView& view, std::string_view field, DType expected) {
  if (view.dtype != expected) {
    return InvalidArgumentError("{}.dtype = {} does not match the expected {}", field,
                                DTypeName(view.dtype), DTypeName(expected));
  }
  return OkStatus();
}

Status ExpectShape(const TensorView& view, std::string_view field,
                   std::initializer_list<int64_t> shape,
                   std::initializer_list<std::string_view> dim_names) {
  if (view.shape.size() != shape.size()) {
    return InvalidArgumentError("{}.shape = [{}] must have {} dimensions", field,
                                fmt::join(view.shape, ", "), shape.size());
  }
  size_t i = 0;
  auto name = dim_names.begin();
  for (int64_t expected : shape) {
    if (expected >= 0 && view.shape[i] != expected) {
      return InvalidArgumentError("{}.shape[{}] = {} does not match {} = {}", field, i,
                                  view.shape[i], *name, expected);
    }
    ++i;
    ++name;
  }
  return OkStatus();
}

}  // namespace epd
