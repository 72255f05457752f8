// common/cuda_check.h and common/cuda_driver.h, on any machine: with a GPU driver or without
// one (CI), where the driver lookup must fail cleanly instead of keeping the process from
// starting.
#include <gtest/gtest.h>

#include "common/cuda_check.h"
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

}  // namespace
}  // namespace epd::cuda
