// The cuda backend runs each (group, node rank) on its own stream (op_lane.h): a group's
// device waits never hold back another group's ops on the same GPU. Two node ranks share GPU 0
// when only one GPU is visible (small grids keep their kernels resident together).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <chrono>

#include "common/fence_page.h"
#include "tests/gpu/moe_harness.h"
#include "tests/gpu/two_rank_fixture.h"

namespace epd::gputest {
namespace {

using std::chrono::milliseconds;

TEST(CudaLaneIsolation, AGroupsNeverSignalledFenceLeavesAnotherGroupOnTheSameRankRunning) {
  EPD_REQUIRE_GPUS(1);
  // A private backend whose op_timeout is far longer than any op of the test takes: an op that
  // waited for another group's stuck op would fail with DEADLINE_EXCEEDED only after it.
  auto backend = TwoRankBackend(milliseconds(60'000));
  ASSERT_NE(backend, nullptr);
  {
    MoeHarness stuck(*backend, TwoRankSpec("lane_stuck"), TwoRankDevices());
    MoeHarness running(*backend, TwoRankSpec("lane_free"), TwoRankDevices());
    auto fence = backend->CreateFence(0);
    ASSERT_TRUE(fence.ok()) << fence.status().ToString();
    ASSERT_TRUE(backend->WaitFence(stuck.handle(0), **fence, 1).ok());  // nobody signals yet

    RunCheckedLayer(running, 31);
    if (HasFatalFailure()) return;

    // The stuck group's stream still waits; the free group's stream signals it.
    EXPECT_EQ(cudaStreamQuery(CudaBackendStream(*backend, stuck.handle(0))), cudaErrorNotReady);
    EXPECT_NE(CudaBackendStream(*backend, stuck.handle(0)),
              CudaBackendStream(*backend, running.handle(0)));
    ASSERT_TRUE(backend->SignalFence(running.handle(0), **fence, 1).ok());
    EXPECT_TRUE(WaitComplete(*backend, stuck.handle(0)).ok());
  }
}

TEST(CudaLaneIsolation, TwoGroupsEnqueuedInOppositeOrdersOnTwoRanksBothComplete) {
  EPD_REQUIRE_GPUS(1);
  // A private backend whose op_timeout is far longer than any op of the test takes: an op that
  // waited for another group's stuck op would fail with DEADLINE_EXCEEDED only after it.
  auto backend = TwoRankBackend(milliseconds(60'000));
  ASSERT_NE(backend, nullptr);
  {
    MoeHarness a(*backend, TwoRankSpec("lane_a"), TwoRankDevices());
    MoeHarness b(*backend, TwoRankSpec("lane_b"), TwoRankDevices());
    auto a_inputs = BindTwoRanks(a, 41);
    auto b_inputs = BindTwoRanks(b, 42);
    // Rank 0: a then b; rank 1: b then a. On one stream per rank each rank's first dispatch
    // would wait for a peer op queued behind the peer's first one.
    ASSERT_TRUE(backend->Dispatch(a.handle(0), a.DispatchArgsOf(0)).ok());
    ASSERT_TRUE(backend->Dispatch(b.handle(0), b.DispatchArgsOf(0)).ok());
    ASSERT_TRUE(backend->Dispatch(b.handle(1), b.DispatchArgsOf(1)).ok());
    ASSERT_TRUE(backend->Dispatch(a.handle(1), a.DispatchArgsOf(1)).ok());
    for (MoeHarness* h : {&a, &b}) {
      for (int r = 0; r < 2; ++r) {
        const Status s = WaitComplete(*backend, h->handle(r));
        EXPECT_TRUE(s.ok()) << h->config().name << " rank " << r << ": " << s.ToString();
      }
    }
    a.ExpectDispatchMatches(a_inputs, {16, 16});
    b.ExpectDispatchMatches(b_inputs, {16, 16});
  }
}

}  // namespace
}  // namespace epd::gputest
