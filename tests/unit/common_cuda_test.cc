// common/cuda_check.h and common/cuda_driver.h, on any machine: with a GPU driver or without
// one (CI), where the driver lookup must fail cleanly instead of keeping the process from
// starting. common/cuda_copy.h needs a GPU (skipped without one).
#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <numeric>
#include <vector>

#include "common/cuda_check.h"
#include "common/cuda_copy.h"
#include "common/cuda_driver.h"

namespace epd::cuda {
namespace {

// False without a driver or a device: the runtime then keeps its initialisation error as the
// last error, which nothing can clear.
bool RuntimeUsable() {
  int devices = 0;
  const bool usable = cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0;
  cudaGetLastError();
  return usable;
}

Status SelectDevice(int device) {
  EPD_CUDA_CHECK(cudaSetDevice(device));
  return OkStatus();
}

// A failed runtime call leaves its error as the thread's last error; the check must clear
// it, or the next kernel launch's cudaGetLastError() reports an error it did not cause.
TEST(CudaCheckTest, FailureNamesTheCallAndClearsTheLastError) {
  const Status status = SelectDevice(-1);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), StatusCode::kInternal);
  EXPECT_NE(status.message().find("cudaSetDevice(device) failed: cuda"), std::string::npos)
      << status.message();
  EXPECT_NE(status.message().find("common_cuda_test.cc:"), std::string::npos) << status.message();
  if (RuntimeUsable()) {
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
    EXPECT_EQ(status.message().find("sticky"), std::string::npos) << status.message();
  } else {
    EXPECT_NE(status.message().find("no usable CUDA driver or device"), std::string::npos)
        << status.message();
  }
}

TEST(CudaCheckTest, OutOfMemoryIsResourceExhausted) {
  const Status status = CudaStatus(cudaErrorMemoryAllocation, "cudaMalloc(&p, n)", "a/b.cc", 7);
  EXPECT_EQ(status.code(), StatusCode::kResourceExhausted);
  EXPECT_NE(status.message().find("cudaMalloc(&p, n) failed: cudaErrorMemoryAllocation"),
            std::string::npos)
      << status.message();
  EXPECT_NE(status.message().find("at b.cc:7"), std::string::npos) << status.message();
  EXPECT_EQ(CuStatus(CUDA_ERROR_OUT_OF_MEMORY, "cuMemAlloc", "x.cc", 1).code(),
            StatusCode::kResourceExhausted);
  EXPECT_EQ(CuStatus(CUDA_ERROR_INVALID_VALUE, "cuMemAlloc", "x.cc", 1).code(),
            StatusCode::kInternal);
}

TEST(CudaDriverTest, ResolvesEveryEntryPointOrSaysWhichIsMissing) {
  const StatusOr<const DriverApi*> driver = Driver();
  if (driver.ok()) {
    const DriverApi& api = **driver;
    EXPECT_NE(api.get_error_name, nullptr);
    EXPECT_NE(api.get_error_string, nullptr);
    EXPECT_NE(api.mem_get_address_range, nullptr);
    EXPECT_NE(api.stream_write_value64, nullptr);
    EXPECT_NE(api.stream_wait_value64, nullptr);
    // With a driver, driver errors are named by the driver.
    const Status status = CuStatus(CUDA_ERROR_INVALID_VALUE, "cuThing()", "x.cc", 1);
    EXPECT_NE(status.message().find("CUDA_ERROR_INVALID_VALUE"), std::string::npos)
        << status.message();
  } else {
    EXPECT_EQ(driver.status().code(), StatusCode::kUnavailable);
    EXPECT_NE(driver.status().message().find("CUDA driver entry point cu"), std::string::npos)
        << driver.status().message();
  }
  if (RuntimeUsable()) {
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  }
  // The answer is resolved once and kept.
  EXPECT_EQ(Driver().ok(), driver.ok());
}

TEST(CudaCopyTest, RoundTripsPageableBytesAndFills) {
  if (!RuntimeUsable()) GTEST_SKIP() << "no CUDA driver or device";
  const size_t bytes = size_t{8} << 20;  // past the sizes the driver copies inline
  std::vector<uint8_t> host(bytes);
  std::iota(host.begin(), host.end(), uint8_t{7});
  void* device = nullptr;
  ASSERT_EQ(cudaMalloc(&device, bytes), cudaSuccess);
  ASSERT_TRUE(CopyNow(device, host.data(), bytes).ok());
  std::vector<uint8_t> back(bytes, 0);
  ASSERT_TRUE(CopyNow(back.data(), device, bytes).ok());
  EXPECT_EQ(back, host);
  ASSERT_TRUE(FillNow(static_cast<char*>(device) + 1, 0xab, bytes - 2).ok());
  ASSERT_TRUE(CopyNow(back.data(), device, bytes).ok());
  EXPECT_EQ(back.front(), host.front());
  EXPECT_EQ(back[1], 0xab);
  EXPECT_EQ(back[bytes - 2], 0xab);
  EXPECT_EQ(back.back(), host.back());
  EXPECT_TRUE(CopyNow(back.data(), device, 0).ok());  // nothing to do, nothing touched
  EXPECT_EQ(cudaFree(device), cudaSuccess);
}

// The property cudaMemcpy lacks: a blocking stream of the process held by a stream wait (a
// frontend's stream waiting on a fence it has not signalled yet) does not hold the copy.
TEST(CudaCopyTest, DoesNotWaitForABlockingStreamHeldByAStreamWait) {
  if (!RuntimeUsable()) GTEST_SKIP() << "no CUDA driver or device";
  const StatusOr<const DriverApi*> driver = Driver();
  ASSERT_TRUE(driver.ok()) << driver.status().ToString();
  uint64_t* word = nullptr;
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&word), sizeof(uint64_t)), cudaSuccess);
  ASSERT_EQ(cudaMemset(word, 0, sizeof(uint64_t)), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  cudaStream_t held = nullptr, releaser = nullptr;
  ASSERT_EQ(cudaStreamCreate(&held), cudaSuccess);  // a blocking stream
  ASSERT_EQ(cudaStreamCreateWithFlags(&releaser, cudaStreamNonBlocking), cudaSuccess);
  const auto address = reinterpret_cast<CUdeviceptr>(word);
  ASSERT_EQ((*driver)->stream_wait_value64(held, address, 1, CU_STREAM_WAIT_VALUE_GEQ),
            CUDA_SUCCESS);

  std::vector<uint8_t> host(1 << 20, 0x3c);
  void* device = nullptr;
  ASSERT_EQ(cudaMalloc(&device, host.size()), cudaSuccess);
  auto copy = std::async(std::launch::async, [&] {
    // The async thread's current device: the test's (0).
    return CopyNow(device, host.data(), host.size());
  });
  const bool finished = copy.wait_for(std::chrono::seconds(20)) == std::future_status::ready;
  // Release the held stream either way, so that a failing run still ends.
  ASSERT_EQ((*driver)->stream_write_value64(releaser, address, 1, CU_STREAM_WRITE_VALUE_DEFAULT),
            CUDA_SUCCESS);
  ASSERT_EQ(cudaStreamSynchronize(held), cudaSuccess);
  EXPECT_TRUE(finished) << "the copy waited for a blocking stream held by a stream wait";
  const Status copied = copy.get();
  EXPECT_TRUE(copied.ok()) << copied.ToString();
  EXPECT_EQ(cudaStreamDestroy(held), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(releaser), cudaSuccess);
  EXPECT_EQ(cudaFree(device), cudaSuccess);
  EXPECT_EQ(cudaFree(word), cudaSuccess);
}

TEST(CudaCopyTest, LeavesTheCallersDeviceCurrent) {
  if (!RuntimeUsable()) GTEST_SKIP() << "no CUDA driver or device";
  int devices = 0;
  ASSERT_EQ(cudaGetDeviceCount(&devices), cudaSuccess);
  const int last = devices - 1;
  ASSERT_EQ(cudaSetDevice(last), cudaSuccess);
  void* device = nullptr;
  ASSERT_EQ(cudaMalloc(&device, 64), cudaSuccess);
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  std::vector<uint8_t> host(64, 1);
  ASSERT_TRUE(CopyNow(device, host.data(), host.size()).ok());
  ASSERT_TRUE(FillNow(device, 2, host.size()).ok());
  int current = -1;
  ASSERT_EQ(cudaGetDevice(&current), cudaSuccess);
  EXPECT_EQ(current, 0) << "memory on GPU " << last;
  ASSERT_TRUE(CopyNow(host.data(), device, host.size()).ok());
  EXPECT_EQ(host[63], 2);
  EXPECT_EQ(cudaFree(device), cudaSuccess);
}

}  // namespace
}  // namespace epd::cuda
