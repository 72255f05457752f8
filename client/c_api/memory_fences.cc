// C API: shared memory, buffer registration, fences.
#include "client/c_api/internal.h"

using epd::c_api::NullArgument;
using epd::c_api::Report;

extern "C" {

epd_status_t epd_shm_create(size_t size_bytes, epd_shm_t** shm) {
  if (shm == nullptr) return NullArgument("epd_shm_create", "shm");
  *shm = nullptr;
  auto created = epd::SharedMemoryBuffer::Create(size_bytes);
  if (!created.ok()) return Report(created.status());
  *shm = new epd_shm{std::move(*created)};
  return EPD_OK;
}

void* epd_shm_data(const epd_shm_t* shm) { return shm != nullptr ? shm->buffer->data() : nullptr; }
size_t epd_shm_size(const epd_shm_t* shm) { return shm != nullptr ? shm->buffer->size() : 0; }
const char* epd_shm_name(const epd_shm_t* shm) {
  return shm != nullptr ? shm->buffer->name().c_str() : "";
}
void epd_shm_destroy(epd_shm_t* shm) { delete shm; }

epd_status_t epd_register_shm(epd_session_t* session, const epd_shm_t* shm, uint64_t offset,
                              uint64_t size, uint64_t* buffer_id) {
  if (session == nullptr) return NullArgument("epd_register_shm", "session");
  if (shm == nullptr) return NullArgument("epd_register_shm", "shm");
  if (buffer_id == nullptr) return NullArgument("epd_register_shm", "buffer_id");
  auto registered = session->session->RegisterBuffer(shm->buffer->Source(offset, size));
  if (!registered.ok()) return Report(registered.status());
  *buffer_id = *registered;
  return EPD_OK;
}

epd_status_t epd_device_allocation(const void* ptr, uint64_t* base, uint64_t* size_bytes,
                                   int32_t* device) {
  if (ptr == nullptr) return NullArgument("epd_device_allocation", "ptr");
  if (base == nullptr || size_bytes == nullptr || device == nullptr) {
    return NullArgument("epd_device_allocation", "base/size_bytes/device");
  }
  return Report(epd::c_api::DeviceAllocation(ptr, base, size_bytes, device));
}

epd_status_t epd_register_device(epd_session_t* session, const void* ptr, uint64_t size_bytes,
                                 uint64_t* buffer_id) {
  if (session == nullptr) return NullArgument("epd_register_device", "session");
  if (ptr == nullptr) return NullArgument("epd_register_device", "ptr");
  if (buffer_id == nullptr) return NullArgument("epd_register_device", "buffer_id");
  auto source = epd::c_api::ExportDevice(ptr, size_bytes);
  if (!source.ok()) return Report(source.status());
  auto registered = session->session->RegisterBuffer(*source);
  if (!registered.ok()) return Report(registered.status());
  *buffer_id = *registered;
  return EPD_OK;
}

epd_status_t epd_release_buffer(epd_session_t* session, uint64_t buffer_id) {
  if (session == nullptr) return NullArgument("epd_release_buffer", "session");
  return Report(session->session->ReleaseBuffer(buffer_id));
}

epd_status_t epd_fence_create(epd_session_t* session, epd_fence_t** fence) {
  if (session == nullptr) return NullArgument("epd_fence_create", "session");
  if (fence == nullptr) return NullArgument("epd_fence_create", "fence");
  *fence = nullptr;
  auto created = session->session->CreateFence();
  if (!created.ok()) return Report(created.status());
  auto* f = new epd_fence{session, std::move(*created)};
  {
    std::lock_guard lock(session->fences_mu);
    session->fences[f->fence->id()] = f->fence.get();
  }
  *fence = f;
  return EPD_OK;
}

uint64_t epd_fence_id(const epd_fence_t* fence) { return fence != nullptr ? fence->fence->id() : 0; }
int32_t epd_fence_on_device(const epd_fence_t* fence) {
  return fence != nullptr && fence->fence->on_device() ? 1 : 0;
}
void* epd_fence_counter(const epd_fence_t* fence) {
  return fence != nullptr ? fence->fence->counter() : nullptr;
}

epd_status_t epd_fence_signal(epd_fence_t* fence, uint64_t value) {
  if (fence == nullptr) return NullArgument("epd_fence_signal", "fence");
  return Report(fence->fence->Signal(value));
}

epd_status_t epd_fence_load(const epd_fence_t* fence, uint64_t* value) {
  if (fence == nullptr) return NullArgument("epd_fence_load", "fence");
  if (value == nullptr) return NullArgument("epd_fence_load", "value");
  if (fence->fence->on_device()) {
    return Report(epd::FailedPreconditionError(
        "fence {} lives in device memory: wait on a stream (epd_fence_wait_on_stream)",
        fence->fence->id()));
  }
  *value = fence->fence->Load();
  return EPD_OK;
}

epd_status_t epd_fence_wait(const epd_fence_t* fence, uint64_t value, int64_t timeout_ms) {
  if (fence == nullptr) return NullArgument("epd_fence_wait", "fence");
  if (fence->fence->on_device()) {
    return Report(epd::FailedPreconditionError(
        "fence {} lives in device memory: wait on a stream (epd_fence_wait_on_stream)",
        fence->fence->id()));
  }
  return Report(
      fence->fence->Wait(value, std::chrono::milliseconds(std::max<int64_t>(0, timeout_ms))));
}

epd_status_t epd_fence_signal_on_stream(epd_fence_t* fence, uint64_t value, void* cuda_stream) {
  if (fence == nullptr) return NullArgument("epd_fence_signal_on_stream", "fence");
  return Report(epd::c_api::SignalOnStream(*fence->fence, value, cuda_stream));
}

epd_status_t epd_fence_wait_on_stream(epd_fence_t* fence, uint64_t value, void* cuda_stream) {
  if (fence == nullptr) return NullArgument("epd_fence_wait_on_stream", "fence");
  return Report(epd::c_api::WaitOnStream(*fence->fence, value, cuda_stream));
}

epd_status_t epd_fence_destroy(epd_fence_t* fence) {
  if (fence == nullptr) return EPD_OK;
  epd_session* session = fence->session;
  const uint64_t id = fence->fence->id();
  {
    std::lock_guard lock(session->fences_mu);
    session->fences.erase(id);
  }
  epd::Status destroyed = session->session->closed() ? epd::OkStatus()
                                                     : session->session->DestroyFence(id);
  delete fence;
  return Report(destroyed);
}

}  // extern "C"
