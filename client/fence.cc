#include "client/epd/fence.h"

#include <atomic>
#include <thread>

#include "common/fence_page.h"

namespace epd {

StatusOr<std::unique_ptr<Fence>> Fence::Open(const v1::CreateFenceResponse& created) {
  if (created.counter_offset() + sizeof(uint64_t) > created.source().size() ||
      created.counter_offset() % alignof(uint64_t) != 0) {
    return InternalError("fence {}: counter_offset={} does not fit a {}-byte page",
                         created.fence_id(), created.counter_offset(), created.source().size());
  }
  auto fence = std::unique_ptr<Fence>(new Fence());
  fence->id_ = created.fence_id();
  fence->buffer_id_ = created.buffer_id();
  fence->counter_offset_ = created.counter_offset();
  fence->source_ = created.source();
  EPD_ASSIGN_OR_RETURN(fence->region_, MapMemorySource(created.source()));
  if (!fence->region_->on_device()) {
    const auto* header = fence->region_->at<FencePageHeader>(0);
    if (header->magic != kFenceMagic || header->version != kFenceVersion ||
        header->counter_offset != created.counter_offset()) {
      return FailedPreconditionError(
          "fence {}: page header magic={:#x} version={} counter_offset={} does not match "
          "this client (magic={:#x} version={} counter_offset={})",
          created.fence_id(), header->magic, header->version, header->counter_offset, kFenceMagic,
          kFenceVersion, created.counter_offset());
    }
  }
  return fence;
}

Status Fence::Signal(uint64_t value) {
  if (on_device()) {
    return FailedPreconditionError("fence {} lives in device memory: signal it on a stream", id_);
  }
  std::atomic_ref<uint64_t>(*counter()).store(value, std::memory_order_release);
  return OkStatus();
}

uint64_t Fence::Load() const {
  if (on_device()) return 0;
  return std::atomic_ref<uint64_t>(*counter()).load(std::memory_order_acquire);
}

Status Fence::Wait(uint64_t value, std::chrono::milliseconds timeout) const {
  if (on_device()) {
    return FailedPreconditionError("fence {} lives in device memory: wait on a stream", id_);
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  // Spin briefly (ops complete in microseconds), then back off to sleeping.
  for (int spin = 0;; ++spin) {
    const uint64_t now_value = Load();
    if (now_value >= value) return OkStatus();
    if (std::chrono::steady_clock::now() >= deadline) {
      return DeadlineExceededError("fence {}: counter is {} after {} ms, waiting for >= {}", id_,
                                   now_value, timeout.count(), value);
    }
    if (spin < 1000) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }
}

v1::FenceOp Fence::At(uint64_t value) const {
  v1::FenceOp op;
  op.set_fence_id(id_);
  op.set_value(value);
  return op;
}

}  // namespace epd
