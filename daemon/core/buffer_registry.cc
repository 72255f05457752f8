#include "daemon/core/buffer_registry.h"

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
  if (memory == nullptr && ref.buffer_id != 0) {
    return NotFoundError("{}.buffer_id = {} is not a buffer of this session", field, ref.buffer_id);
  }
  EPD_ASSIGN_OR_RETURN(uint64_t bytes, TensorBytes(ref, field));
  EPD_RETURN_IF_ERROR(CheckTensorPlacement(ref, field, bytes, memory->size()));
  TensorView view;
  view.data = static_cast<char*>(memory->data()) + ref.offset_bytes;
  view.dtype = ref.dtype;
  view.shape = ref.shape;
  return view;
}

}  // namespace epd
