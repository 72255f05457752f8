#include "client/epd/tensor.h"

#include "client/epd/fence.h"

namespace epd {

v1::TensorRef MakeTensorRef(uint64_t buffer_id, uint64_t offset_bytes, v1::DType dtype,
                            const std::vector<int64_t>& shape) {
  v1::TensorRef ref;
  ref.set_buffer_id(buffer_id);
  ref.set_offset_bytes(offset_bytes);
  ref.set_dtype(dtype);
  for (int64_t d : shape) ref.add_shape(d);
  return ref;
}

v1::OpOptions BlockingOptions() {
  v1::OpOptions options;
  options.set_blocking(true);
  return options;
}

v1::OpOptions FencedOptions(const Fence* wait, uint64_t wait_value, const Fence* signal,
                            uint64_t signal_value) {
  v1::OpOptions options;
  if (wait != nullptr) *options.mutable_wait() = wait->At(wait_value);
  if (signal != nullptr) *options.mutable_signal() = signal->At(signal_value);
  return options;
}

}  // namespace epd
