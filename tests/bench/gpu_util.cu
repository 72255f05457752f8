#include "tests/bench/gpu_util.h"

#include <cudaTypedefs.h>
#include <fmt/format.h>

#include <atomic>
#include <thread>

#include "common/cuda_copy.h"

namespace epd::bench::gpu {
namespace {

// gate[0]: the value the host opened; gate[1]: set to 1 when a wait gave up.
__global__ void GateKernel(volatile uint32_t* gate, uint32_t value, uint64_t timeout_ns) {
  uint64_t start = 0;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  while (gate[0] < value) {
    uint64_t now = 0;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    if (now - start > timeout_ns) {
      gate[1] = 1;
      __threadfence_system();
      return;
    }
    __nanosleep(64);
  }
}

}  // namespace

Status Check(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return OkStatus();
  return InternalError("{}: {} ({})", what, cudaGetErrorName(error), cudaGetErrorString(error));
}

int DeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) return 0;
  return count;
}

std::string DeviceName(int device) {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) return "unknown";
  return prop.name;
}

StatusOr<std::unique_ptr<DeviceBuffer>> DeviceBuffer::Create(int device, size_t bytes) {
  std::unique_ptr<DeviceBuffer> buffer(new DeviceBuffer());
  buffer->device_ = device;
  buffer->bytes_ = bytes;
  EPD_BENCH_CUDA(cudaSetDevice(device));
  EPD_BENCH_CUDA(cudaMalloc(&buffer->data_, bytes == 0 ? 256 : bytes));
  EPD_RETURN_IF_ERROR(epd::cuda::FillNow(buffer->data_, 0, bytes == 0 ? 256 : bytes));
  return StatusOr<std::unique_ptr<DeviceBuffer>>(std::move(buffer));  // C++17: no implicit move
}

DeviceBuffer::~DeviceBuffer() {
  if (data_ != nullptr) {
    cudaSetDevice(device_);
    cudaFree(data_);
  }
}

StatusOr<std::unique_ptr<Gate>> Gate::Create(Kind kind) {
  std::unique_ptr<Gate> gate(new Gate());
  gate->kind_ = kind;
  if (kind == Kind::kStreamWait) {
    // Through the runtime's entry point: epd-bench need not link libcuda itself.
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
    EPD_BENCH_CUDA(cudaGetDriverEntryPointByVersion("cuStreamWaitValue32", &gate->wait_value_fn_,
                                                    11070, cudaEnableDefault, &found));
    if (found != cudaDriverEntryPointSuccess || gate->wait_value_fn_ == nullptr) {
      return UnavailableError("the driver has no cuStreamWaitValue32");
    }
  }
  void* host = nullptr;
  EPD_BENCH_CUDA(cudaHostAlloc(&host, 4096, cudaHostAllocMapped | cudaHostAllocPortable));
  gate->host_ = static_cast<uint32_t*>(host);
  gate->host_[0] = 0;
  gate->host_[1] = 0;
  void* device = nullptr;
  EPD_BENCH_CUDA(cudaHostGetDevicePointer(&device, host, 0));
  gate->device_ = static_cast<uint32_t*>(device);
  return StatusOr<std::unique_ptr<Gate>>(std::move(gate));
}

Gate::~Gate() {
  if (host_ != nullptr) {
    Open(UINT32_MAX);  // release anything still armed before the memory goes
    cudaFreeHost(host_);
  }
}

Status Gate::Arm(cudaStream_t stream, uint32_t value, uint64_t timeout_ns) {
  if (kind_ == Kind::kStreamWait) {
    auto wait = reinterpret_cast<PFN_cuStreamWaitValue32_v11070>(wait_value_fn_);
    const CUresult result = wait(reinterpret_cast<CUstream>(stream),
                                 reinterpret_cast<CUdeviceptr>(device_), value,
                                 CU_STREAM_WAIT_VALUE_GEQ);
    if (result != CUDA_SUCCESS) {
      return InternalError("cuStreamWaitValue32 on the gate: CUresult {}", static_cast<int>(result));
    }
    return OkStatus();
  }
  GateKernel<<<1, 1, 0, stream>>>(device_, value, timeout_ns);
  return Check(cudaGetLastError(), "launching the gate kernel");
}

void Gate::Open(uint32_t value) {
  __atomic_store_n(host_, value, __ATOMIC_RELEASE);  // C++17 in .cu: no atomic_ref
}

bool Gate::TakeTimedOut() { return __atomic_exchange_n(host_ + 1, 0u, __ATOMIC_ACQ_REL) != 0; }

StatusOr<std::unique_ptr<EventPair>> EventPair::Create(int device) {
  std::unique_ptr<EventPair> pair(new EventPair());
  EPD_BENCH_CUDA(cudaSetDevice(device));
  EPD_BENCH_CUDA(cudaEventCreate(&pair->start_));
  EPD_BENCH_CUDA(cudaEventCreate(&pair->stop_));
  return StatusOr<std::unique_ptr<EventPair>>(std::move(pair));
}

EventPair::~EventPair() {
  if (start_ != nullptr) cudaEventDestroy(start_);
  if (stop_ != nullptr) cudaEventDestroy(stop_);
}

Status EventPair::RecordStart(cudaStream_t stream) {
  return Check(cudaEventRecord(start_, stream), "cudaEventRecord(start)");
}
Status EventPair::RecordStop(cudaStream_t stream) {
  return Check(cudaEventRecord(stop_, stream), "cudaEventRecord(stop)");
}

StatusOr<double> EventPair::ElapsedUs(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    const cudaError_t state = cudaEventQuery(stop_);
    if (state == cudaSuccess) break;
    if (state != cudaErrorNotReady) return Check(state, "cudaEventQuery(stop)");
    if (std::chrono::steady_clock::now() > deadline) {
      return DeadlineExceededError("the timed span did not end within {} ms", timeout.count());
    }
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
  float ms = 0;
  EPD_BENCH_CUDA(cudaEventElapsedTime(&ms, start_, stop_));
  return static_cast<double>(ms) * 1e3;
}

}  // namespace epd::bench::gpu
