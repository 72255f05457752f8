// The first op of each kind, posted behind a fence wait that the frontend signals only after
// the op is enqueued (the daemon's fenced path), must not wait for the device: with CUDA's
// lazy loading a kernel's first launch loads its module and that waits for the spinning
// fence-wait kernel, i.e. until op_timeout (epd-bench's first daemon_fenced case failed so).
//
// Its own binary: the launches below must be the process's first, which a test sharing a
// binary with other GPU tests cannot promise.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <vector>

#include "daemon/backends/cuda/cuda_backend.h"
#include "common/fence_page.h"
#include "tests/gpu/gpu_test_env.h"

namespace epd::gputest {
namespace {

using SteadyClock = std::chrono::steady_clock;

// What a frontend's stream does to open the fence: a write from outside the daemon's stream.
void SignalFromHost(ExportedMemory& fence, uint64_t value) {
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  void* counter = static_cast<char*>(fence.data()) + kFenceCounterOffset;
  EXPECT_EQ(cudaMemcpyAsync(counter, &value, sizeof(value), cudaMemcpyHostToDevice, stream),
            cudaSuccess);
  EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  cudaStreamDestroy(stream);
}

TEST(CudaFirstLaunch, FirstFencedOpsEnqueueWithoutWaitingForTheFence) {
  int gpus = 0;
  if (cudaGetDeviceCount(&gpus) != cudaSuccess || gpus == 0) {
    cudaGetLastError();
    GTEST_SKIP() << "no CUDA GPU";
  }
  CudaBackendOptions options;
  options.devices = {0};
  options.op_timeout = std::chrono::milliseconds(20'000);
  options.create_nccl_comms = false;
  auto created = CreateCudaBackend(options);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  Backend& backend = **created;

  GroupConfig config;
  config.name = "first-launch";
  config.ranks = {0};
  config.experts = 8;
  config.hidden = 256;
  config.max_tokens_per_rank = 16;
  config.top_k = 2;
  config.dtype = DType::kBf16;
  auto group = backend.CreateGroup(config);
  ASSERT_TRUE(group.ok()) << group.status().ToString();
  auto handle = backend.CreateHandle(**group, 0);
  ASSERT_TRUE(handle.ok()) << handle.status().ToString();
  auto fence = backend.CreateFence(0);
  ASSERT_TRUE(fence.ok()) << fence.status().ToString();

  const int n = config.max_tokens_per_rank, K = config.top_k, H = config.hidden;
  std::vector<int32_t> idx(n * K);
  for (int t = 0; t < n; ++t) {
    idx[t * K] = t % config.experts;
    idx[t * K + 1] = (t + 3) % config.experts;
  }
  DeviceBuffer topk(0, idx.size() * sizeof(int32_t));
  topk.Upload(idx.data(), idx.size() * sizeof(int32_t));
  DeviceBuffer x(0, size_t(n) * H * 2), out(0, size_t(n) * H * 2);
  std::vector<char> zeros(x.size(), 0);
  x.Upload(zeros.data(), zeros.size());

  UpdateArgs update;
  update.topk_idx = TensorView{topk.data(), DType::kInt32, {n, K}};
  update.num_tokens = n;
  DispatchArgs dispatch;
  dispatch.x = TensorView{x.data(), config.dtype, {n, H}};
  CombineArgs combine;
  combine.out = TensorView{out.data(), config.dtype, {n, H}};

  struct Step {
    const char* name;
    std::function<Status()> launch;
  };
  const std::vector<Step> steps = {
      {"update", [&] { return backend.UpdateHandle(**handle, update); }},
      {"dispatch", [&] { return backend.Dispatch(**handle, dispatch); }},
      {"combine", [&] { return backend.Combine(**handle, combine); }},
  };
  uint64_t value = 0;
  for (const Step& step : steps) {
    SCOPED_TRACE(step.name);
    ++value;
    ASSERT_TRUE(backend.WaitFence(**handle, **fence, value).ok());
    const auto start = SteadyClock::now();
    Status launched = step.launch();
    const auto launch_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(SteadyClock::now() - start);
    SignalFromHost(**fence, value);  // only now, as a frontend answered by the daemon would
    Status completed = WaitComplete(backend, **handle);
    EXPECT_TRUE(launched.ok()) << launched.ToString();
    EXPECT_TRUE(completed.ok()) << completed.ToString();
    // A launch is microseconds; one that waited for the fence takes op_timeout (20 s).
    EXPECT_LT(launch_ms.count(), 5'000) << step.name << "'s launch waited for the fence";
  }
}

}  // namespace
}  // namespace epd::gputest
