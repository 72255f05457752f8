// The client library's own contract against a real daemon: ops pipelined on one session's
// stream are each answered (request ids matched, errors to the right caller, several threads
// posting at once), bad session requests fail cleanly, and a daemon that dies fails pending
// and later ops with UNAVAILABLE instead of hanging the frontend.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "tests/integration/client_test_support.h"

namespace epd::testing {
namespace {

using example::Problem;

Problem OneRank() {
  Problem p;
  p.ranks = 1;
  p.experts = 4;
  p.hidden = 64;
  p.max_tokens = 16;
  p.top_k = 2;
  return p;
}

TEST(ClientSessionTest, PipelinedOpsAreAllAnsweredAndErrorsReachTheirCaller) {
  auto daemon = DaemonProcess::Start({}, 1);
  ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
  const Problem p = OneRank();
  example::RankRunnerOptions options;
  options.group = UniqueName("pipe");
  auto world = MakeRanks((*daemon)->address(), p, options);
  ASSERT_TRUE(world.ok()) << world.status().ToString();
  example::RankRunner& runner = *(*world)[0].runner;
  Session& session = runner.session();
  const auto in = example::MakeInputs(p, 4, 0, 0, 12, /*dyadic_weights=*/true);
  ASSERT_EPD_OK(runner.Stage(in));

  // 30 layers posted back to back without waiting; every third update is malformed.
  std::vector<std::future<Status>> answers;
  std::vector<bool> bad;
  for (int layer = 0; layer < 30; ++layer) {
    v1::UpdateHandleRequest update;
    update.set_handle_id(runner.handle_id());
    *update.mutable_topk_idx() = runner.topk_ref(12);
    *update.mutable_topk_weights() = runner.weights_ref(12);
    if (layer % 3 == 2) update.mutable_topk_idx()->set_buffer_id(4242);
    answers.push_back(session.UpdateAsync(update));
    bad.push_back(layer % 3 == 2);
    v1::DispatchRequest dispatch;
    dispatch.set_handle_id(runner.handle_id());
    *dispatch.mutable_x() = runner.x_ref(12);
    answers.push_back(session.DispatchAsync(dispatch));
    bad.push_back(false);
    v1::CombineRequest combine;
    combine.set_handle_id(runner.handle_id());
    *combine.mutable_out() = runner.out_ref(12);
    *combine.mutable_options() = BlockingOptions();
    answers.push_back(session.CombineAsync(combine));
    bad.push_back(false);
  }
  for (size_t i = 0; i < answers.size(); ++i) {
    const Status status = session.Await(answers[i], "pipelined op");
    if (bad[i]) {
      EXPECT_EPD_ERROR(status, StatusCode::kNotFound, "topk_idx.buffer_id = 4242") << "op " << i;
    } else {
      EXPECT_TRUE(status.ok()) << "op " << i << ": " << status.ToString();
    }
  }
  // One rank, identity expert, expert-major: combine returns the routed tokens.
  const auto expected = example::ExpectedOutput(p, in, example::Identity);
  const int64_t mismatch = example::FirstMismatch(p, 12, runner.out(), expected.data());
  EXPECT_EQ(mismatch, -1) << example::DescribeElement(p, mismatch, runner.out(), expected.data());
}

TEST(ClientSessionTest, LayersAllocateNothing) {
  auto daemon = DaemonProcess::Start({}, 2);
  ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
  Problem p = OneRank();
  p.ranks = 2;
  example::RankRunnerOptions options;
  options.group = UniqueName("noalloc");
  auto world = MakeRanks((*daemon)->address(), p, options);
  ASSERT_TRUE(world.ok()) << world.status().ToString();
  auto before = (*world)[0].client->GetStats();
  ASSERT_TRUE(before.ok());
  for (int layer = 0; layer < 6; ++layer) ASSERT_EPD_OK(RunGoodLayer(*world, layer, layer % 2));
  auto after = (*world)[0].client->GetStats();
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->allocations(), before->allocations());
  EXPECT_EQ(after->live_bytes(), before->live_bytes());
  EXPECT_EQ(after->dispatch().completed() - before->dispatch().completed(), 12u);
  EXPECT_EQ(after->combine().completed() - before->combine().completed(), 12u);
}

TEST(ClientSessionTest, SeveralThreadsShareOneSession) {
  auto daemon = DaemonProcess::Start({}, 1);
  ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
  const Problem p = OneRank();
  example::RankRunnerOptions options;
  options.group = UniqueName("threads");
  auto world = MakeRanks((*daemon)->address(), p, options);
  ASSERT_TRUE(world.ok()) << world.status().ToString();
  example::RankRunner& runner = *(*world)[0].runner;
  ASSERT_EPD_OK(runner.Stage(example::MakeInputs(p, 4, 0, 0, 8, true)));
  // Updates only (no collectives), from 4 threads at once, each with its own bad ids.
  const std::vector<Status> statuses = RunOnRanks(4, [&](int thread) -> Status {
    for (int i = 0; i < 25; ++i) {
      v1::TensorRef topk = runner.topk_ref(8);
      const bool bad = i % 5 == thread % 5;
      if (bad) topk.set_buffer_id(1000 + thread);
      const Status status =
          runner.session().Update(runner.handle_id(), topk, std::nullopt, v1::OpOptions());
      if (bad != !status.ok())
        return InternalError("thread {} op {}: {}", thread, i, status.ToString());
      if (bad && status.message().find(std::to_string(1000 + thread)) == std::string::npos) {
        return InternalError("thread {} got another thread's answer: {}", thread,
                             status.ToString());
      }
    }
    return OkStatus();
  });
  for (const Status& status : statuses) EXPECT_TRUE(status.ok()) << status.ToString();
}

TEST(ClientSessionTest, BadSessionRequestsFailCleanly) {
  auto daemon = DaemonProcess::Start({}, 2);
  ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
  auto client = ConnectOrDie((*daemon)->address());
  ASSERT_NE(client, nullptr);
  EXPECT_EPD_ERROR(client->OpenSession(5, "too-high").status(), StatusCode::kInvalidArgument,
                   "rank = 5");
  EXPECT_EPD_ERROR(client->OpenSession(-1, "negative").status(), StatusCode::kInvalidArgument,
                   "rank = -1");
  auto info = client->GetNodeInfo();
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_EQ(info->backend(), "cpu");
  EXPECT_EQ(info->ranks(), 2);
  // The client still opens good sessions afterwards.
  auto session = client->OpenSession(1, "good");
  ASSERT_TRUE(session.ok()) << session.status().ToString();
  EXPECT_EQ((*session)->rank(), 1);
  EXPECT_NE((*session)->id(), 0u);
  EXPECT_EPD_OK((*session)->Close());
  EXPECT_EPD_OK((*session)->Close());  // idempotent
}

// A missing socket is named at once (no wait for the connect timeout).
TEST(ClientSessionTest, ConnectingToNoSocketIsNotFoundAtOnce) {
  const auto start = std::chrono::steady_clock::now();
  auto client = Client::Connect("unix:///tmp/epd-test-no-daemon-here.sock");
  EXPECT_EPD_ERROR(client.status(), StatusCode::kNotFound, "no such socket",
                   "/tmp/epd-test-no-daemon-here.sock");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(1));
}

TEST(ClientSessionTest, DaemonDeathFailsPendingAndLaterOps) {
  auto daemon = DaemonProcess::Start({}, 2);
  ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
  Problem p = OneRank();
  p.ranks = 2;
  example::RankRunnerOptions options;
  options.group = UniqueName("death");
  auto world = MakeRanks((*daemon)->address(), p, options);
  ASSERT_TRUE(world.ok()) << world.status().ToString();
  example::RankRunner& rank0 = *(*world)[0].runner;
  ASSERT_EPD_OK(rank0.Stage(example::MakeInputs(p, 4, 0, 0, 8, true)));
  ASSERT_EPD_OK(rank0.session().Update(rank0.handle_id(), rank0.topk_ref(8), std::nullopt,
                                       BlockingOptions()));
  v1::DispatchRequest dispatch;
  dispatch.set_handle_id(rank0.handle_id());
  *dispatch.mutable_x() = rank0.x_ref(8);
  *dispatch.mutable_options() = BlockingOptions();
  std::future<Status> pending = rank0.session().DispatchAsync(dispatch);  // waits for rank 1
  ASSERT_EQ(WaitForOpsRunning((*world)[0].client->stub(), rank0.session().id(), 1), 1);
  (*daemon)->Kill();
  ASSERT_EQ(pending.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  EXPECT_EPD_ERROR(pending.get(), StatusCode::kUnavailable);
  EXPECT_EPD_ERROR(rank0.session().Dispatch(rank0.handle_id(), rank0.x_ref(8), BlockingOptions()),
                   StatusCode::kUnavailable);
  EXPECT_FALSE((*world)[0].client->GetStats().ok());
  const auto start = std::chrono::steady_clock::now();
  world->clear();  // sessions close without a daemon: must not hang
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

}  // namespace
}  // namespace epd::testing
