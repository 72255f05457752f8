#include "tests/gpu/gpu_test_env.h"

#include <cstdlib>
#include <future>
#include <thread>

#include "common/cuda_copy.h"

namespace epd::gputest {
namespace {

std::chrono::milliseconds TestOpTimeout() {
  const char* timeout = std::getenv("EPD_TEST_OP_TIMEOUT_MS");
  return std::chrono::milliseconds(timeout != nullptr ? std::atoi(timeout) : 3000);
}

struct Shared {
  std::unique_ptr<Backend> backend;
  std::string reason;
  int gpus = 0;
};

Shared& Get() {
  static Shared* shared = [] {
    auto* s = new Shared();  // lives until exit: tests share it
    ReserveHardwareQueues();  // before cudaGetDeviceCount initialises CUDA
    int count = 0;
    if (cudaError_t e = cudaGetDeviceCount(&count); e != cudaSuccess || count == 0) {
      s->reason = e == cudaSuccess ? "cudaGetDeviceCount found none" : cudaGetErrorString(e);
      return s;
    }
    CudaBackendOptions options;
    options.op_timeout = TestOpTimeout();
    options.create_nccl_comms = false;  // NcclGroup test covers them; saves init per group
    auto backend = CreateCudaBackend(options);
    if (!backend.ok()) {
      s->reason = backend.status().ToString();
      return s;
    }
    s->backend = std::move(backend).value();
    s->gpus = s->backend->num_ranks();
    return s;
  }();
  return *shared;
}

}  // namespace

Backend* SharedGpuBackend() {
  static Backend* backend = []() -> Backend* {
    if (GpuCount() == 0) return nullptr;
    CudaBackendOptions options;
    for (int r = 0; r < kSharedGpuRanks; ++r) options.devices.push_back(r % GpuCount());
    options.op_timeout = TestOpTimeout();
    options.create_nccl_comms = false;
    options.max_blocks_per_op = 16;  // 4 ranks' kernels resident together on one GPU
    auto created = CreateCudaBackend(options);
    EXPECT_TRUE(created.ok()) << created.status().ToString();
    return created.ok() ? std::move(created).value().release() : nullptr;  // lives until exit
  }();
  return backend;
}

int SharedGpuDevice(int node_rank) { return node_rank % GpuCount(); }

Backend* SharedBackend() { return Get().backend.get(); }
const std::string& SkipReason() { return Get().reason; }
int GpuCount() { return Get().gpus; }

DeviceBuffer::DeviceBuffer(int device, size_t bytes) : device_(device), size_(bytes) {
  EXPECT_EQ(cudaSetDevice(device), cudaSuccess);
  EXPECT_EQ(cudaMalloc(&data_, bytes == 0 ? 16 : bytes), cudaSuccess);
  const Status zeroed = cuda::FillNow(data_, 0, bytes == 0 ? 16 : bytes);
  EXPECT_TRUE(zeroed.ok()) << zeroed.ToString();
}

DeviceBuffer::~DeviceBuffer() {
  cudaSetDevice(device_);
  cudaFree(data_);
}

void DeviceBuffer::Upload(const void* host, size_t bytes, size_t offset) {
  CopyToDevice(device_, static_cast<char*>(data_) + offset, host, bytes);
}

void DeviceBuffer::Download(void* host, size_t bytes, size_t offset) const {
  CopyToHost(device_, host, static_cast<const char*>(data_) + offset, bytes);
}

// NOTE: complete on return (common/cuda_copy.h): the ops launched next run on the backend's
// non-blocking streams, which would not wait for a cudaMemcpy's bytes to land.
void CopyToDevice(int device, void* dst, const void* src, size_t bytes) {
  ASSERT_EQ(cudaSetDevice(device), cudaSuccess);
  const Status copied = cuda::CopyNow(dst, src, bytes);
  ASSERT_TRUE(copied.ok()) << copied.ToString();
}

void CopyToHost(int device, void* dst, const void* src, size_t bytes) {
  ASSERT_EQ(cudaSetDevice(device), cudaSuccess);
  const Status copied = cuda::CopyNow(dst, src, bytes);
  ASSERT_TRUE(copied.ok()) << copied.ToString();
}

Status WaitComplete(Backend& backend, BackendHandle& handle) {
  std::promise<Status> promise;
  auto future = promise.get_future();
  backend.Complete(handle, [&promise](Status s) { promise.set_value(std::move(s)); });
  return future.get();
}

void OnEveryRank(int ranks, const std::function<void(int)>& fn) {
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r) threads.emplace_back(fn, r);
  for (auto& t : threads) t.join();
}

}  // namespace epd::gputest
