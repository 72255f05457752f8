// The device half of frontend_memory.h (builds with CUDA): tensors in cudaMalloc memory
// exported through CUDA IPC, fences written / awaited on a stream of the frontend.
#include <cuda_runtime_api.h>

#include <thread>

#include "client/epd/cuda.h"
#include "client/examples/frontend_memory.h"
#include "common/cuda_copy.h"

namespace epd::example {
namespace {

Status CudaError(std::string_view what, cudaError_t err) {
  return InternalError("{} failed: {} ({})", what, cudaGetErrorName(err), cudaGetErrorString(err));
}
#define EXAMPLE_CUDA(call)                                                  \
  do {                                                                      \
    const cudaError_t example_err_ = (call);                                \
    if (example_err_ != cudaSuccess) return CudaError(#call, example_err_); \
  } while (0)

class DeviceMemory : public FrontendMemory {
 public:
  ~DeviceMemory() override {
    if (data_ != nullptr) cudaFree(data_);
  }
  static StatusOr<std::unique_ptr<FrontendMemory>> Create(size_t bytes, int device) {
    auto memory = std::unique_ptr<DeviceMemory>(new DeviceMemory());
    EXAMPLE_CUDA(cudaSetDevice(device));
    EXAMPLE_CUDA(cudaMalloc(&memory->data_, bytes));
    EPD_RETURN_IF_ERROR(cuda::FillNow(memory->data_, 0, bytes));
    memory->bytes_ = bytes;
    EPD_ASSIGN_OR_RETURN(memory->source_, cuda::ExportDeviceTensor(memory->data_, bytes));
    return std::unique_ptr<FrontendMemory>(std::move(memory));
  }
  size_t size() const override { return bytes_; }
  v1::MemorySource Source() const override { return source_; }
  void* device_data() const override { return data_; }
  // NOTE: complete when they return (common/cuda_copy.h): the daemon reads these bytes as soon
  // as the RPC or fence signal that follows reaches it.
  Status Write(size_t offset, const void* src, size_t bytes) override {
    return cuda::CopyNow(at(offset), src, bytes);
  }
  Status Read(size_t offset, void* dst, size_t bytes) const override {
    return cuda::CopyNow(dst, at(offset), bytes);
  }
  Status Fill(size_t offset, uint8_t value, size_t bytes) override {
    return cuda::FillNow(at(offset), value, bytes);
  }

 private:
  DeviceMemory() = default;
  char* at(size_t offset) const { return static_cast<char*>(data_) + offset; }
  void* data_ = nullptr;
  size_t bytes_ = 0;
  v1::MemorySource source_;
};

// One stream per frontend thread for its fence ops. NOTE: not one per process: a process
// that drives several ranks (tests do, a thread per rank) would queue one rank's fence signal
// behind another rank's stream wait, which may itself wait for that signal through the
// group's collective.
struct FenceStreamOwner {
  cudaStream_t stream = nullptr;
  ~FenceStreamOwner() {
    if (stream != nullptr) cudaStreamDestroy(stream);  // at thread exit; errors are moot then
  }
};
StatusOr<cudaStream_t> FenceStream() {
  thread_local FenceStreamOwner owner;
  if (owner.stream == nullptr) {
    EXAMPLE_CUDA(cudaStreamCreateWithFlags(&owner.stream, cudaStreamNonBlocking));
  }
  return owner.stream;
}

}  // namespace

StatusOr<std::unique_ptr<FrontendMemory>> CreateDeviceMemory(size_t bytes, int device) {
  return DeviceMemory::Create(bytes, device);
}

Status CopyToHost(void* host, const void* device, size_t bytes) {
  return cuda::CopyNow(host, device, bytes);
}

Status CopyToDevice(void* device, const void* host, size_t bytes) {
  return cuda::CopyNow(device, host, bytes);
}

Status FrontendSignal(Fence& fence, uint64_t value) {
  if (!fence.on_device()) return fence.Signal(value);
  EPD_ASSIGN_OR_RETURN(cudaStream_t stream, FenceStream());
  return cuda::SignalFenceOnStream(fence, value, stream);
}

Status FrontendWait(Fence& fence, uint64_t value, std::chrono::milliseconds timeout) {
  if (!fence.on_device()) return fence.Wait(value, timeout);
  EPD_ASSIGN_OR_RETURN(cudaStream_t stream, FenceStream());
  EPD_RETURN_IF_ERROR(cuda::WaitFenceOnStream(fence, value, stream));
  // NOTE: a stream wait cannot be cancelled; polling keeps this host wait bounded.
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    const cudaError_t state = cudaStreamQuery(stream);
    if (state == cudaSuccess) return OkStatus();
    if (state != cudaErrorNotReady) return CudaError("cudaStreamQuery", state);
    if (std::chrono::steady_clock::now() >= deadline) {
      return DeadlineExceededError("fence {}: not at {} after {} ms", fence.id(), value,
                                   timeout.count());
    }
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

}  // namespace epd::example
