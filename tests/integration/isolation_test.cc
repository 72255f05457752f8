// Ops of different groups never wait on each other, against the real daemon (cpu backend):
// every (group, rank) runs on its own execution lane. The daemon's op_timeout is far longer
// than the clients' (20 s, ConnectOrDie), so an op that waited for another group's op would
// fail the test with the client's DEADLINE_EXCEEDED instead of passing after the timeout.
#include <gtest/gtest.h>

#include <future>
#include <optional>

#include "tests/integration/client_test_support.h"

namespace epd::testing {
namespace {

using example::Problem;
using example::RankRunner;

constexpr const char* kLongOpTimeoutMs = "120000";

v1::OpOptions Blocking() {
  v1::OpOptions options;
  options.set_blocking(true);
  return options;
}

// Two groups over the same two ranks; rank 0 posts group A's dispatch then group B's, rank 1
// the other way round. With one stream per rank each rank's first dispatch waits for a peer
// whose matching dispatch is queued behind its own first one: a deadlock until op_timeout.
TEST(IsolationTest, TwoGroupsPostedInOppositeOrdersOnTwoRanksBothCompleteExactly) {
  auto daemon = DaemonProcess::Start({"--op-timeout-ms", kLongOpTimeoutMs}, 2);
  ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
  const Problem problem = SmallProblem();
  example::RankRunnerOptions a_options, b_options;
  a_options.group = UniqueName("iso-a");
  b_options.group = UniqueName("iso-b");
  auto a = MakeRanks((*daemon)->address(), problem, a_options, ShortClientLimits());
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  auto b = MakeRanks((*daemon)->address(), problem, b_options, ShortClientLimits());
  ASSERT_TRUE(b.ok()) << b.status().ToString();

  const std::vector<Status> statuses = RunOnRanks(2, [&](int r) -> Status {
    // This rank's order of the two groups.
    RankRunner* first = (r == 0 ? *a : *b)[r].runner.get();
    RankRunner* second = (r == 0 ? *b : *a)[r].runner.get();
    std::vector<example::RankInputs> inputs;
    const int n = example::TokensFor(problem, r, 0);
    for (RankRunner* runner : {first, second}) {
      const uint64_t seed = runner == (*a)[r].runner.get() ? 11 : 23;
      inputs.push_back(example::MakeInputs(problem, seed, r, 0, n, true));
      EPD_RETURN_IF_ERROR(runner->Stage(inputs.back()));
      EPD_RETURN_IF_ERROR(runner->session().Update(runner->handle_id(), runner->topk_ref(n),
                                                   runner->weights_ref(n), Blocking()));
    }
    // Both dispatches are posted before either is awaited, as a frontend posting ahead does.
    std::future<Status> first_dispatch =
        first->session().DispatchAsync(first->DispatchRequestFor(n, Blocking()));
    std::future<Status> second_dispatch =
        second->session().DispatchAsync(second->DispatchRequestFor(n, Blocking()));
    EPD_RETURN_IF_ERROR(first->session().Await(first_dispatch, "first dispatch"));
    EPD_RETURN_IF_ERROR(second->session().Await(second_dispatch, "second dispatch"));
    std::vector<std::future<Status>> combines;
    for (RankRunner* runner : {first, second}) {
      EPD_RETURN_IF_ERROR(runner->RunExpertsOnReceived(example::Identity));
      v1::CombineRequest combine;
      combine.set_handle_id(runner->handle_id());
      *combine.mutable_out() = runner->out_ref(n);
      *combine.mutable_options() = Blocking();
      combines.push_back(runner->session().CombineAsync(std::move(combine)));
    }
    for (size_t g = 0; g < 2; ++g) {
      RankRunner* runner = g == 0 ? first : second;
      EPD_RETURN_IF_ERROR(runner->session().Await(combines[g], "combine"));
      const std::vector<uint8_t> expected =
          example::ExpectedOutput(problem, inputs[g], example::Identity);
      const int64_t bad = example::FirstMismatch(problem, n, runner->out(), expected.data());
      if (bad >= 0) return InternalError("rank {} group {}: output differs at {}", r, g, bad);
    }
    return OkStatus();
  });
  for (const Status& status : statuses) ASSERT_EPD_OK(status);
  // Both groups stay aligned: a plain layer on each still matches.
  EXPECT_EPD_OK(RunGoodLayer(*a, 1));
  EXPECT_EPD_OK(RunGoodLayer(*b, 1));
}

// Session A's blocking op waits on a fence A never signals. Session B, on the same rank but
// another group, runs whole layers meanwhile; A's op is still pending afterwards (observed
// through ListSessions) and completes once A signals.
TEST(IsolationTest, AStuckFencedOpOfOneSessionDoesNotDelayAnotherGroupOnItsRank) {
  auto daemon = DaemonProcess::Start({"--op-timeout-ms", kLongOpTimeoutMs}, 2);
  ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();

  Problem solo = SmallProblem();
  solo.ranks = 1;  // group A: node rank 0 only
  solo.experts = 2;
  auto a_client = ConnectOrDie((*daemon)->address());
  ASSERT_NE(a_client, nullptr);
  example::RankRunnerOptions a_options;
  a_options.group = UniqueName("iso-stuck");
  auto a = RankRunner::Create(*a_client, solo, 0, a_options);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  auto gate = (*a)->session().CreateFence();
  ASSERT_TRUE(gate.ok()) << gate.status().ToString();
  const int n = example::TokensFor(solo, 0, 0);
  ASSERT_EPD_OK((*a)->Stage(example::MakeInputs(solo, 5, 0, 0, n, true)));
  v1::UpdateHandleRequest stuck;
  stuck.set_handle_id((*a)->handle_id());
  *stuck.mutable_topk_idx() = (*a)->topk_ref(n);
  *stuck.mutable_topk_weights() = (*a)->weights_ref(n);
  *stuck.mutable_options() = Blocking();
  *stuck.mutable_options()->mutable_wait() = (*gate)->At(1);
  std::future<Status> stuck_answer = (*a)->session().UpdateAsync(std::move(stuck));
  const uint64_t a_session = (*a)->session().id();
  ASSERT_EQ(WaitForOpsRunning(a_client->stub(), a_session, 1), 1);

  example::RankRunnerOptions b_options;
  b_options.group = UniqueName("iso-free");
  auto b = MakeRanks((*daemon)->address(), SmallProblem(), b_options, ShortClientLimits());
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  for (int layer = 0; layer < 3; ++layer) {
    ASSERT_EPD_OK(RunGoodLayer(*b, layer));
    ASSERT_EPD_OK(RunGoodLayer(*b, layer, /*fenced=*/true));
  }

  // A's op is still waiting for its fence, unanswered.
  EXPECT_EQ(OpsRunning(a_client->stub(), a_session), 1);
  EXPECT_EQ(stuck_answer.wait_for(std::chrono::seconds(0)), std::future_status::timeout);
  ASSERT_EPD_OK((*gate)->Signal(1));
  EXPECT_EPD_OK((*a)->session().Await(stuck_answer, "the gated update"));
  EXPECT_EQ(WaitForOpsRunning(a_client->stub(), a_session, 0), 0);
}

}  // namespace
}  // namespace epd::testing
