// The per-rank collective path on GPUs: each rank enqueues its own op with its own arguments,
// peers' buffers come from the tables published at CreateHandle, and every device wait is
// released by the abort word (AbortGroup, BeginShutdown) or by a peer that gave the op up.
// Two-rank cases run on one GPU too (both ranks on GPU 0, small grids so both kernels are
// resident at once); with two GPUs they use GPU 0 and 1.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "tests/gpu/moe_harness.h"
#include "tests/gpu/two_rank_fixture.h"

namespace epd::gputest {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

void ExpectFullRound(MoeHarness& harness, uint64_t seed) {
  const std::vector<int> n = {16, 16};
  auto inputs = BindTwoRanks(harness, seed);
  for (const Status& s : harness.Dispatch()) ASSERT_TRUE(s.ok()) << s.ToString();
  harness.ExpectDispatchMatches(inputs, n);
  for (const Status& s : harness.Combine(false, seed + 1)) ASSERT_TRUE(s.ok()) << s.ToString();
  harness.ExpectCombineMatches(inputs, n);
}

TEST(CudaRankPath, ALateRankFindsItsPeersOpsAlreadyOnTheirStreamsAndResultsStayExact) {
  EPD_REQUIRE_GPUS(1);
  auto backend = TwoRankBackend(milliseconds(10'000));
  ASSERT_NE(backend, nullptr);
  {
    MoeHarness harness(*backend, TwoRankSpec("late_rank"), TwoRankDevices());
    auto inputs = BindTwoRanks(harness, 11);
    const auto statuses = harness.DispatchWithLateRank(1, [&] {
      // Rank 0's dispatch was enqueued without waiting for rank 1: it is on its stream now,
      // spinning for rank 1's counts, and stays there while rank 1 is late.
      EXPECT_EQ(cudaStreamQuery(CudaBackendStream(*backend, harness.handle(0))), cudaErrorNotReady);
      std::this_thread::sleep_for(milliseconds(200));
      EXPECT_EQ(cudaStreamQuery(CudaBackendStream(*backend, harness.handle(0))), cudaErrorNotReady);
    });
    for (const Status& s : statuses) ASSERT_TRUE(s.ok()) << s.ToString();
    harness.ExpectDispatchMatches(inputs, {16, 16});
    for (const Status& s : harness.Combine(true, 12)) ASSERT_TRUE(s.ok()) << s.ToString();
    harness.ExpectCombineMatches(inputs, {16, 16});
  }
}

TEST(CudaRankPath, ARankThatRejectsItsArgumentsReleasesItsWaitingPeerAtOnce) {
  EPD_REQUIRE_GPUS(1);
  auto backend = TwoRankBackend(milliseconds(20'000));
  ASSERT_NE(backend, nullptr);
  {
    MoeHarness harness(*backend, TwoRankSpec("rejected"), TwoRankDevices());
    BindTwoRanks(harness, 21);
    const auto start = Clock::now();
    DeviceBuffer x(0, 16 * 512 * 2);
    DispatchArgs good;
    good.x = TensorView{x.data(), DType::kBf16, {16, 512}};
    ASSERT_TRUE(backend->Dispatch(harness.handle(0), good).ok());
    DispatchArgs bad;
    bad.x = TensorView{nullptr, DType::kBf16, {0, 512}};  // 16 tokens are bound
    EXPECT_EQ(backend->Dispatch(harness.handle(1), bad).code(), StatusCode::kInvalidArgument);
    const Status peer = WaitComplete(*backend, harness.handle(0));
    EXPECT_LT(Clock::now() - start, milliseconds(5'000)) << "waited for the op timeout";
    EXPECT_EQ(peer.code(), StatusCode::kInvalidArgument) << peer.ToString();
    EXPECT_NE(peer.message().find("group rank 1: dispatch of group 'rejected'"), std::string::npos)
        << peer.message();
    EXPECT_TRUE(WaitComplete(*backend, harness.handle(1)).ok());
    ExpectFullRound(harness, 22);
  }
}

TEST(CudaRankPath, ALoneRankTimesOutNamingThePeerAndTheLatePeerFailsAtOnce) {
  EPD_REQUIRE_GPUS(1);
  auto backend = TwoRankBackend(milliseconds(300));
  ASSERT_NE(backend, nullptr);
  {
    MoeHarness harness(*backend, TwoRankSpec("lone"), TwoRankDevices());
    BindTwoRanks(harness, 31);
    DeviceBuffer x(0, 16 * 512 * 2), out(0, 16 * 512 * 2);
    DispatchArgs dispatch;
    dispatch.x = TensorView{x.data(), DType::kBf16, {16, 512}};
    ASSERT_TRUE(backend->Dispatch(harness.handle(0), dispatch).ok());
    Status lone = WaitComplete(*backend, harness.handle(0));
    EXPECT_EQ(lone.code(), StatusCode::kDeadlineExceeded) << lone.ToString();
    EXPECT_NE(lone.message().find("group rank 1's per-expert counts"), std::string::npos)
        << lone.message();
    // Rank 1 comes late to the same op: rank 0 gave it up, so it fails without waiting and
    // says why.
    ASSERT_TRUE(backend->Dispatch(harness.handle(1), dispatch).ok());
    Status late = WaitComplete(*backend, harness.handle(1));
    EXPECT_EQ(late.code(), StatusCode::kDeadlineExceeded) << late.ToString();
    EXPECT_NE(late.message().find("group rank 0 gave up op"), std::string::npos) << late.message();
    EXPECT_NE(late.message().find("waiting for group rank 1"), std::string::npos) << late.message();
    // Combine alike: rank 0 waits for rank 1's expert output, then rank 1 comes late.
    CombineArgs combine;
    combine.out = TensorView{out.data(), DType::kBf16, {16, 512}};
    ASSERT_TRUE(backend->Combine(harness.handle(0), combine).ok());
    lone = WaitComplete(*backend, harness.handle(0));
    EXPECT_NE(lone.message().find("group rank 1's expert-output-ready flag"), std::string::npos)
        << lone.message();
    ASSERT_TRUE(backend->Combine(harness.handle(1), combine).ok());
    EXPECT_EQ(WaitComplete(*backend, harness.handle(1)).code(), StatusCode::kDeadlineExceeded);
    // Every rank issued the same number of collectives: the group serves again.
    ExpectFullRound(harness, 32);
  }
}

TEST(CudaAbort, AbortGroupReleasesAWaitingDispatchAndTheGroupRecovers) {
  EPD_REQUIRE_GPUS(1);
  auto backend = TwoRankBackend(milliseconds(30'000));
  ASSERT_NE(backend, nullptr);
  {
    MoeHarness harness(*backend, TwoRankSpec("aborted"), TwoRankDevices());
    BindTwoRanks(harness, 41);
    DeviceBuffer x(0, 16 * 512 * 2);
    DispatchArgs dispatch;
    dispatch.x = TensorView{x.data(), DType::kBf16, {16, 512}};
    ASSERT_TRUE(backend->Dispatch(harness.handle(0), dispatch).ok());
    EXPECT_EQ(cudaStreamQuery(CudaBackendStream(*backend, harness.handle(0))), cudaErrorNotReady);
    const auto start = Clock::now();
    backend->AbortGroup(*harness.group(), UnavailableError("group rank 1's session ended"));
    const Status released = WaitComplete(*backend, harness.handle(0));
    EXPECT_LT(Clock::now() - start, milliseconds(2'000)) << "not released by the abort word";
    EXPECT_EQ(released.code(), StatusCode::kUnavailable) << released.ToString();
    EXPECT_NE(released.message().find("group rank 1's session ended"), std::string::npos)
        << released.message();
    // Sequence numbers were realigned: both ranks' next op is the same op again.
    ExpectFullRound(harness, 42);
  }
}

TEST(CudaAbort, ShutdownReleasesAStuckFenceWaitAndEveryLaterWait) {
  EPD_REQUIRE_GPUS(1);
  auto backend = TwoRankBackend(milliseconds(30'000));
  ASSERT_NE(backend, nullptr);
  {
    MoeHarness harness(*backend, TwoRankSpec("shutdown"), TwoRankDevices());
    BindTwoRanks(harness, 51);
    auto fence = backend->CreateFence(0);
    ASSERT_TRUE(fence.ok()) << fence.status().ToString();
    ASSERT_TRUE(backend->WaitFence(harness.handle(0), **fence, 5).ok());  // never signalled
    DeviceBuffer x(0, 16 * 512 * 2);
    DispatchArgs dispatch;
    dispatch.x = TensorView{x.data(), DType::kBf16, {16, 512}};
    ASSERT_TRUE(backend->Dispatch(harness.handle(0), dispatch).ok());  // behind the fence
    EXPECT_EQ(cudaStreamQuery(CudaBackendStream(*backend, harness.handle(0))), cudaErrorNotReady);
    const auto start = Clock::now();
    backend->BeginShutdown();
    const Status released = WaitComplete(*backend, harness.handle(0));
    EXPECT_LT(Clock::now() - start, milliseconds(2'000)) << "not released by the abort word";
    EXPECT_EQ(released.code(), StatusCode::kUnavailable) << released.ToString();
    EXPECT_NE(released.message().find("shutting down"), std::string::npos) << released.message();
    // A collective enqueued after shutdown gives up at once too.
    ASSERT_TRUE(backend->Dispatch(harness.handle(1), dispatch).ok());
    EXPECT_EQ(WaitComplete(*backend, harness.handle(1)).code(), StatusCode::kUnavailable);
  }
}

}  // namespace
}  // namespace epd::gputest
