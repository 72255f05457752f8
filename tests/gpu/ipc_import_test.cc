// Import of a frontend's memory through CUDA IPC, from a second copy of this binary acting as
// the frontend (ipc_exporter.h; its exporting test is here).
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "tests/gpu/gpu_test_env.h"
#include "tests/gpu/ipc_exporter.h"

namespace epd::gputest {
namespace {

// The exporter: runs only in the child (the parent starts it with kChildEnv set).
TEST(IpcExporterChild, ExportUntilStdinCloses) {
  if (std::getenv(kChildEnv) == nullptr) GTEST_SKIP() << "runs only as the IPC test's child";
  void* data = nullptr;
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&data, kExportBytes), cudaSuccess);
  ASSERT_EQ(cudaMemset(data, 0x5a, kExportBytes), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  cudaIpcMemHandle_t handle;
  ASSERT_EQ(cudaIpcGetMemHandle(&handle, data), cudaSuccess);
  std::cout << "\nHANDLE " << ToHex(&handle, sizeof(handle)) << std::endl;
  char c;
  while (read(STDIN_FILENO, &c, 1) > 0) {
  }
  cudaFree(data);
}

TEST(CudaImport, OpensAnotherProcessesMemoryOnceAndChecksItsRange) {
  EPD_REQUIRE_GPUS(1);
  Backend& backend = *SharedBackend();
  ExporterProcess exporter;
  ASSERT_EQ(exporter.handle().size(), sizeof(cudaIpcMemHandle_t)) << "exporter gave no handle";

  auto a = backend.Import(Source(exporter.handle(), 4096, 8192), 0);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ((*a)->size(), 8192u);
  std::vector<unsigned char> bytes(8192);
  CopyToHost(0, bytes.data(), (*a)->data(), bytes.size());
  EXPECT_EQ(bytes.front(), 0x5a);
  EXPECT_EQ(bytes.back(), 0x5a);

  // Same allocation again: the cached mapping, not a second open.
  auto b = backend.Import(Source(exporter.handle(), 0, kExportBytes), 0);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(static_cast<char*>((*a)->data()) - 4096, static_cast<char*>((*b)->data()));

  auto beyond = backend.Import(Source(exporter.handle(), kExportBytes - 100, 200), 0);
  EXPECT_EQ(beyond.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(beyond.status().message().find("exceeds"), std::string::npos)
      << beyond.status().message();

  if (GpuCount() >= 2) {
    // Memory of GPU 0 used by node rank 1 (peer access through the mapping).
    auto peer = backend.Import(Source(exporter.handle(), 0, 4096), 1);
    ASSERT_TRUE(peer.ok()) << peer.status().ToString();
    unsigned char first = 0;
    CopyToHost(1, &first, (*peer)->data(), 1);
    EXPECT_EQ(first, 0x5a);
  }

  // Released by every user, the mapping closes; importing opens it again.
  a = Status(StatusCode::kCancelled, "released");
  b = Status(StatusCode::kCancelled, "released");
  auto again = backend.Import(Source(exporter.handle(), 0, 64), 0);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
}

// A corrupted handle (a frontend's bug, or bytes changed on the way) is refused or opens
// nothing harmful: no crash, no sticky CUDA error, and the real handle still imports.
TEST(CudaImport, CorruptedHandlesLeaveTheContextWorking) {
  EPD_REQUIRE_GPUS(1);
  Backend& backend = *SharedBackend();
  ExporterProcess exporter;
  const std::string& real = exporter.handle();
  ASSERT_EQ(real.size(), sizeof(cudaIpcMemHandle_t)) << "exporter gave no handle";
  std::vector<std::string> corrupted = {std::string(real.size(), '\0'),
                                        std::string(real.size(), '\xff')};
  for (size_t byte = 0; byte < real.size(); byte += 7) {
    std::string flipped = real;
    flipped[byte] = static_cast<char>(flipped[byte] ^ 0x10);
    corrupted.push_back(flipped);
  }
  int refused = 0;
  for (const std::string& handle : corrupted) {
    auto imported = backend.Import(Source(handle, 0, 4096), 0);
    if (imported.ok()) continue;  // a byte the driver does not read
    ++refused;
    EXPECT_NE(imported.status().message().find("cudaIpcOpenMemHandle"), std::string::npos)
        << imported.status().ToString();
  }
  EXPECT_GE(refused, 2) << "the all-zero and all-ones handles at least are refused";
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  auto good = backend.Import(Source(real, 0, 4096), 0);
  ASSERT_TRUE(good.ok()) << good.status().ToString();
  unsigned char first = 0;
  CopyToHost(0, &first, (*good)->data(), 1);
  EXPECT_EQ(first, 0x5a);
}

}  // namespace
}  // namespace epd::gputest
