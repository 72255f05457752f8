// Giving memory back never waits for the GPU (daemon/backends/cuda/reclaimer.h). cudaFree,
// cudaFreeHost and cudaIpcCloseMemHandle wait for every running kernel and hold every other
// thread's launches meanwhile: a release while a fence-wait kernel spins used to stop the
// daemon's launches until that wait failed at op_timeout.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "tests/gpu/ipc_exporter.h"
#include "tests/gpu/moe_harness.h"
#include "tests/gpu/two_rank_fixture.h"

namespace epd::gputest {
namespace {

using std::chrono::milliseconds;

// The first bytes of an imported range, as the exporter filled them.
void ExpectExportedBytes(const Memory& memory) {
  unsigned char bytes[16];
  ASSERT_EQ(cudaMemcpy(bytes, memory.data(), sizeof(bytes), cudaMemcpyDeviceToHost), cudaSuccess);
  for (unsigned char b : bytes) EXPECT_EQ(b, 0x5a);
}

// cudaIpcCloseMemHandle and cudaFree wait for every kernel of the process's context, whichever
// backend of the process launched it, and hold back other threads' launches meanwhile. Memory
// another backend of this process gives back while this one's rank 0 spins for its late peer
// must therefore wait too (one reclaimer per process): given back at once, the close would
// hold the late rank's launch until rank 0 timed out.
TEST(CudaReclaim, MemoryAnotherBackendGivesBackWaitsForThisOnesSpinningRank) {
  EPD_REQUIRE_GPUS(1);
  auto backend = TwoRankBackend(milliseconds(3'000));
  auto other = TwoRankBackend(milliseconds(3'000));
  ASSERT_NE(backend, nullptr);
  ASSERT_NE(other, nullptr);
  ExporterProcess exporter;
  ASSERT_EQ(exporter.handle().size(), sizeof(cudaIpcMemHandle_t)) << "exporter gave no handle";
  MoeHarness harness(*backend, TwoRankSpec("spins"), TwoRankDevices());
  auto inputs = BindTwoRanks(harness, 41);
  GroupConfig config = harness.config();
  config.name = "released";
  auto group = other->CreateGroup(config);
  ASSERT_TRUE(group.ok()) << group.status().ToString();
  auto handle = other->CreateHandle(**group, 0);
  ASSERT_TRUE(handle.ok()) << handle.status().ToString();
  auto imported = other->Import(Source(exporter.handle(), 0, 4096), 0);
  ASSERT_TRUE(imported.ok()) << imported.status().ToString();
  const auto start = std::chrono::steady_clock::now();
  const auto statuses = harness.DispatchWithLateRank(1, [&] {
    // No device call here but the releases; the other backend's reclaimer wakes at once.
    imported->reset();
    handle->reset();
    group->reset();
    std::this_thread::sleep_for(milliseconds(200));
  });
  for (const Status& s : statuses) EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_LT(std::chrono::steady_clock::now() - start, milliseconds(2'000))
      << "the late rank's launch waited for a release";
  if (statuses[0].ok() && statuses[1].ok()) harness.ExpectDispatchMatches(inputs, {16, 16});
}

TEST(CudaReclaim, ReleasesWhileAFenceWaitSpinsNeitherWaitForItNorHoldLaunches) {
  EPD_REQUIRE_GPUS(1);
  // A private backend whose op_timeout is far longer than the test: a release that waited for
  // the spinning fence wait would return only when that wait failed.
  auto backend = TwoRankBackend(milliseconds(20'000));
  ASSERT_NE(backend, nullptr);
  ExporterProcess exporter;
  ASSERT_EQ(exporter.handle().size(), sizeof(cudaIpcMemHandle_t)) << "exporter gave no handle";
  {
    MoeHarness stuck(*backend, TwoRankSpec("reclaim_stuck"), TwoRankDevices());
    MoeHarness running(*backend, TwoRankSpec("reclaim_running"), TwoRankDevices());
    auto fence = backend->CreateFence(0);
    ASSERT_TRUE(fence.ok()) << fence.status().ToString();
    ASSERT_TRUE(backend->WaitFence(stuck.handle(0), **fence, 1).ok());  // nobody signals yet

    const int64_t live = backend->allocations().live_bytes();
    {
      // Device memory (handles, sync areas, peer tables, a fence page), pinned host memory (the
      // group's abort word) and an IPC mapping, all released while the wait spins.
      GroupConfig config = running.config();
      config.name = "reclaim_released";
      auto group = backend->CreateGroup(config);
      ASSERT_TRUE(group.ok()) << group.status().ToString();
      auto first = backend->CreateHandle(**group, 0);
      ASSERT_TRUE(first.ok()) << first.status().ToString();
      auto second = backend->CreateHandle(**group, 1);
      ASSERT_TRUE(second.ok()) << second.status().ToString();
      auto released_fence = backend->CreateFence(1);
      ASSERT_TRUE(released_fence.ok()) << released_fence.status().ToString();
      auto imported = backend->Import(Source(exporter.handle(), 0, 4096), 0);
      ASSERT_TRUE(imported.ok()) << imported.status().ToString();
      ExpectExportedBytes(**imported);
    }
    EXPECT_EQ(backend->allocations().live_bytes(), live);
    // The same allocation imported again before its mapping was closed: the mapping comes back.
    auto again = backend->Import(Source(exporter.handle(), 4096, 4096), 0);
    ASSERT_TRUE(again.ok()) << again.status().ToString();
    ExpectExportedBytes(**again);

    // Another group's layers launch and complete meanwhile.
    RunCheckedLayer(running, 31);
    if (HasFatalFailure()) return;

    // Nothing waited for the fence wait: it still spins, and ends well once signalled.
    EXPECT_EQ(cudaStreamQuery(CudaBackendStream(*backend, stuck.handle(0))), cudaErrorNotReady);
    ASSERT_TRUE(backend->SignalFence(running.handle(0), **fence, 1).ok());
    EXPECT_TRUE(WaitComplete(*backend, stuck.handle(0)).ok());
  }
}

// Frontends that post ahead keep a lane busy without a break: each fence wait is enqueued
// before the one before it ended. A released mapping is still closed soon, in a drain window
// (the launch gate held while what runs ends), long before the forced close at 30 s.
TEST(CudaReclaim, AMappingReleasedWhileALaneIsNeverIdleIsClosedInADrainWindow) {
  EPD_REQUIRE_GPUS(1);
  auto backend = TwoRankBackend(milliseconds(20'000));
  ASSERT_NE(backend, nullptr);
  ExporterProcess exporter;
  ASSERT_EQ(exporter.handle().size(), sizeof(cudaIpcMemHandle_t)) << "exporter gave no handle";
  MoeHarness busy(*backend, TwoRankSpec("reclaim_busy"), TwoRankDevices());
  MoeHarness signaller(*backend, TwoRankSpec("reclaim_signaller"), TwoRankDevices());
  auto fence = backend->CreateFence(0);
  ASSERT_TRUE(fence.ok()) << fence.status().ToString();
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> posted{0};
  std::thread poster([&] {
    for (uint64_t v = 1; !stop.load(); ++v) {
      if (!backend->WaitFence(busy.handle(0), **fence, v).ok()) return;
      backend->Complete(busy.handle(0), [](Status) {});
      posted = v;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
      // From another lane, after the next wait of the busy lane is already queued behind.
      if (!backend->SignalFence(signaller.handle(0), **fence, v).ok()) return;
    }
  });
  while (posted.load() < 20) std::this_thread::yield();
  {
    auto imported = backend->Import(Source(exporter.handle(), 0, 4096), 0);
    ASSERT_TRUE(imported.ok()) << imported.status().ToString();
    ExpectExportedBytes(**imported);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (CudaBackendPendingCloses(*backend) > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(5));
  }
  EXPECT_EQ(CudaBackendPendingCloses(*backend), 0u) << "the mapping is still open after 10 s";
  const uint64_t last_posted = posted.load();
  stop = true;
  poster.join();
  ASSERT_TRUE(backend->SignalFence(signaller.handle(0), **fence, last_posted + 1).ok());
  EXPECT_TRUE(WaitComplete(*backend, busy.handle(0)).ok());
  EXPECT_GT(last_posted, 20u);
}

// A handle released while another group's fence wait spins goes back to the GPU only after
// that wait ends. On a GPU filled to the brim, a new handle made meanwhile waits for the free
// instead of failing for want of the memory the released one held.
TEST(CudaReclaim, AHandleMadeRightAfterOneWasReleasedGetsItsMemoryOnAFullGpu) {
  EPD_REQUIRE_GPUS(1);
  auto backend = TwoRankBackend(milliseconds(20'000));
  ASSERT_NE(backend, nullptr);
  const int device = TwoRankDevices()[0];
  MoeHarness stuck(*backend, TwoRankSpec("reclaim_full_stuck"), TwoRankDevices());
  MoeHarness signaller(*backend, TwoRankSpec("reclaim_full_signaller"), TwoRankDevices());
  GroupConfig config = stuck.config();  // the same shape, but handles of ~120 MiB
  config.name = "reclaim_full_big";
  config.hidden = 7168;
  config.max_tokens_per_rank = 1024;
  auto group = backend->CreateGroup(config);
  ASSERT_TRUE(group.ok()) << group.status().ToString();
  const int64_t before = backend->allocations().live_bytes();
  auto handle = backend->CreateHandle(**group, 0);
  ASSERT_TRUE(handle.ok()) << handle.status().ToString();
  const int64_t handle_bytes = backend->allocations().live_bytes() - before;
  ASSERT_GT(handle_bytes, 64 << 20);

  // Leave less than half a handle free.
  ASSERT_EQ(cudaSetDevice(device), cudaSuccess);
  size_t free_bytes = 0, total = 0;
  ASSERT_EQ(cudaMemGetInfo(&free_bytes, &total), cudaSuccess);
  DeviceBuffer hog(device, free_bytes - static_cast<size_t>(handle_bytes) / 2);

  auto fence = backend->CreateFence(0);
  ASSERT_TRUE(fence.ok()) << fence.status().ToString();
  ASSERT_TRUE(backend->WaitFence(stuck.handle(0), **fence, 1).ok());  // the free waits for it
  handle->reset();
  // The wait ends a little later, from another thread, while the new handle is being made.
  std::thread signal([&] {
    std::this_thread::sleep_for(milliseconds(300));
    EXPECT_TRUE(backend->SignalFence(signaller.handle(0), **fence, 1).ok());
  });
  auto again = backend->CreateHandle(**group, 0);
  signal.join();
  EXPECT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_TRUE(WaitComplete(*backend, stuck.handle(0)).ok());
}

// The same group made and released a hundred times while nothing runs: what was released comes
// back to the device (the stream-ordered frees ran and the backend trimmed its pool, with no
// synchronize from anyone), and a new group works every time.
TEST(CudaReclaim, GroupsMadeAndReleasedRepeatedlyGiveTheirMemoryBack) {
  EPD_REQUIRE_GPUS(1);
  auto backend = TwoRankBackend(milliseconds(5'000));
  ASSERT_NE(backend, nullptr);
  const int device = TwoRankDevices()[0];
  ASSERT_EQ(cudaSetDevice(device), cudaSuccess);
  size_t free_before = 0, total = 0;
  const auto settle = [&] {
    // The frees run on the reclaimer's streams: a device-wide sync waits for them.
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  };
  // Handles of ~8 MiB each: a hundred groups' worth not given back would show.
  CaseSpec spec = TwoRankSpec("reclaim_cycle");
  spec.hidden = 4096;
  spec.tokens = 128;
  { MoeHarness warm(*backend, spec, TwoRankDevices()); }
  settle();
  ASSERT_EQ(cudaMemGetInfo(&free_before, &total), cudaSuccess);
  for (int i = 0; i < 100; ++i) {
    MoeHarness harness(*backend, spec, TwoRankDevices());
    if (i % 25 == 0) {
      auto inputs = BindTwoRanks(harness, 100 + i);
      for (const Status& s : harness.Dispatch()) ASSERT_TRUE(s.ok()) << s.ToString();
      harness.ExpectDispatchMatches(inputs, {16, 16});
    }
  }
  // NOTE: no synchronize here: the daemon makes none either, so the backend itself must hand
  // the freed blocks back (its default pool keeps them until a synchronize or a trim).
  // A hundred groups' handles are over 1.6 GiB; what may differ is allocator slack.
  size_t free_after = 0;
  for (int i = 0; i < 1000; ++i) {
    ASSERT_EQ(cudaMemGetInfo(&free_after, &total), cudaSuccess);
    if (free_after + (64u << 20) >= free_before) break;
    std::this_thread::sleep_for(milliseconds(10));
  }
  EXPECT_GE(free_after + (64u << 20), free_before)
      << "free before " << (free_before >> 20) << " MiB, 10 s after the last release "
      << (free_after >> 20) << " MiB";
}

}  // namespace
}  // namespace epd::gputest
