// AwaitEvent (daemon/backends/cuda/nccl_await.h), the rank worker's one wait for the device (a
// high-throughput spanning dispatch's counts): it returns once the work before the event ran,
// gives up at its deadline, and stops at once when its caller says so. The work here is a
// fence-wait kernel that the test releases through host-mapped memory.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>

#include "daemon/backends/cuda/nccl_await.h"
#include "kernels/fence_wait.cuh"
#include "tests/gpu/gpu_test_env.h"

namespace epd::gputest {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

TEST(AwaitEventTest, ReturnsOnceTheWorkRanGivesUpAtTheDeadlineAndStopsWhenTold) {
  EPD_REQUIRE_GPUS(1);
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  uint64_t* counter = nullptr;
  kernels::DeviceError* record = nullptr;
  ASSERT_EQ(cudaHostAlloc(&counter, sizeof(uint64_t), cudaHostAllocMapped), cudaSuccess);
  ASSERT_EQ(cudaHostAlloc(&record, sizeof(kernels::DeviceError), cudaHostAllocMapped), cudaSuccess);
  *counter = 0;
  *record = kernels::DeviceError{};
  cudaStream_t stream = nullptr;
  cudaEvent_t event = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  ASSERT_EQ(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), cudaSuccess);
  // The kernel itself gives up after 20 s: far beyond every wait below.
  ASSERT_EQ(kernels::LaunchFenceWait(counter, 1, 20'000'000'000ull, nullptr, 0, record, stream),
            cudaSuccess);
  ASSERT_EQ(cudaEventRecord(event, stream), cudaSuccess);
  auto running = [] { return OkStatus(); };

  auto start = Clock::now();
  Status waited = cuda::AwaitEvent(event, start + milliseconds(50), running, "the counts");
  const auto timed_out_after = Clock::now() - start;
  EXPECT_EQ(waited.code(), StatusCode::kUnavailable) << waited.ToString();
  EXPECT_NE(waited.message().find("the counts: timed out"), std::string::npos) << waited.ToString();
  EXPECT_GE(timed_out_after, milliseconds(50));
  EXPECT_LT(timed_out_after, milliseconds(5'000));

  start = Clock::now();
  waited = cuda::AwaitEvent(
      event, start + milliseconds(20'000),
      [] { return CancelledError("the communicator was aborted"); }, "the counts");
  EXPECT_EQ(waited.code(), StatusCode::kCancelled) << waited.ToString();
  EXPECT_LT(Clock::now() - start, milliseconds(5'000));

  std::atomic_ref<uint64_t>(*counter).store(1);
  waited = cuda::AwaitEvent(event, Clock::now() + milliseconds(20'000), running, "the counts");
  EXPECT_TRUE(waited.ok()) << waited.ToString();
  EXPECT_EQ(record->code, kernels::kDeviceErrorNone);

  EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  cudaEventDestroy(event);
  cudaStreamDestroy(stream);
  cudaFreeHost(record);
  cudaFreeHost(counter);
}

}  // namespace
}  // namespace epd::gputest
