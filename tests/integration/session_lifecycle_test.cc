// Sessions end with their stream: ops after the end fail with a clear error, everything the
// session owned is freed (stats live_bytes back down, handles and owned groups gone), and a
// peer waiting for it in a collective fails instead of hanging.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "tests/integration/client_test_support.h"

namespace epd::testing {
namespace {

using example::Problem;

class SessionLifecycleTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto daemon = DaemonProcess::Start({}, 2);
    ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
    daemon_ = std::move(daemon).value();
  }
  static void TearDownTestSuite() { daemon_.reset(); }

  static std::unique_ptr<DaemonProcess> daemon_;
};
std::unique_ptr<DaemonProcess> SessionLifecycleTest::daemon_;

TEST_F(SessionLifecycleTest, OpsAfterSessionClosedFail) {
  const Problem p = SmallProblem();
  example::RankRunnerOptions options;
  options.group = UniqueName("closed");
  auto world = MakeRanks(daemon_->address(), p, options);
  ASSERT_TRUE(world.ok()) << world.status().ToString();
  ASSERT_EPD_OK(RunGoodLayer(*world, 0));

  example::RankRunner& rank0 = *(*world)[0].runner;
  const uint64_t old_id = rank0.session().id();
  ASSERT_EPD_OK(rank0.session().Close());
  // Through the closed Session object: refused locally, naming the session.
  EXPECT_EPD_ERROR(rank0.session().Dispatch(rank0.handle_id(), rank0.x_ref(4), BlockingOptions()),
                   StatusCode::kFailedPrecondition, "is closed");
  // Requests naming the ended session: the daemon no longer knows it.
  const std::string id_text = std::to_string(old_id);  // decimal, as the API returns it
  EXPECT_EPD_ERROR(rank0.session().RegisterBuffer(rank0.buffer().Source()).status(),
                   StatusCode::kNotFound, "session_id", id_text);
  EXPECT_EPD_ERROR(rank0.session().CreateHandle(options.group).status(), StatusCode::kNotFound,
                   "session_id", id_text);
  v1::DispatchRequest dispatch;
  dispatch.set_session_id(old_id);
  dispatch.set_handle_id(rank0.handle_id());
  *dispatch.mutable_x() = rank0.x_ref(4);
  v1::OpResponse response;
  EXPECT_EPD_ERROR(RawCall((*world)[0].client->stub(), &v1::Epd::Stub::Dispatch, dispatch,
                           &response, {rank0.session().secret()}),
                   StatusCode::kNotFound, "session_id", id_text);

  // A new frontend for rank 0 joins the same group and works with the old rank 1.
  auto runner = example::RankRunner::Create(*(*world)[0].client, p, 0, options);
  ASSERT_TRUE(runner.ok()) << runner.status().ToString();
  (*world)[0].runner = std::move(runner).value();
  EXPECT_EPD_OK(RunGoodLayer(*world, 1));
}

TEST_F(SessionLifecycleTest, ClosingASessionFreesWhatItOwned) {
  auto client = ConnectOrDie(daemon_->address());
  ASSERT_NE(client, nullptr);
  const v1::Stats before =
      WaitForStats(*client, [](const v1::Stats& s) { return s.sessions_open() == 0; });
  ASSERT_EQ(before.sessions_open(), 0u);

  const Problem p = SmallProblem();
  example::RankRunnerOptions options;
  options.group = UniqueName("owned");
  auto world = MakeRanks(daemon_->address(), p, options);
  ASSERT_TRUE(world.ok()) << world.status().ToString();
  ASSERT_EPD_OK(RunGoodLayer(*world, 0, /*fenced=*/true));
  auto during = client->GetStats();
  ASSERT_TRUE(during.ok());
  EXPECT_EQ(during->sessions_open(), 2u);
  EXPECT_GT(during->live_bytes(), before.live_bytes());
  EXPECT_EQ(HandlesOf(*client, options.group), 2);

  world->clear();  // both frontends go away: their streams end
  const v1::Stats after = WaitForStats(*client, [&](const v1::Stats& s) {
    return s.sessions_open() == 0 && s.live_bytes() == before.live_bytes();
  });
  EXPECT_EQ(after.sessions_open(), 0u);
  EXPECT_EQ(after.live_bytes(), before.live_bytes());
  EXPECT_EQ(after.allocations() - before.allocations(), after.frees() - before.frees());
  EXPECT_EQ(HandlesOf(*client, options.group), -1) << "the session-owned group outlived it";
}

TEST_F(SessionLifecycleTest, PeerSessionEndingFailsAPendingCollective) {
  const Problem p = SmallProblem();
  example::RankRunnerOptions options;
  options.group = UniqueName("peer");
  auto world = MakeRanks(daemon_->address(), p, options);
  ASSERT_TRUE(world.ok()) << world.status().ToString();
  ASSERT_EPD_OK(RunGoodLayer(*world, 0));

  example::RankRunner& rank0 = *(*world)[0].runner;
  const auto in = example::MakeInputs(p, 1, 0, 5, 6, true);
  ASSERT_EPD_OK(rank0.Stage(in));
  ASSERT_EPD_OK(rank0.session().Update(rank0.handle_id(), rank0.topk_ref(6), rank0.weights_ref(6),
                                       BlockingOptions()));
  v1::DispatchRequest dispatch;
  dispatch.set_handle_id(rank0.handle_id());
  *dispatch.mutable_x() = rank0.x_ref(6);
  *dispatch.mutable_options() = BlockingOptions();
  const auto start = std::chrono::steady_clock::now();
  std::future<Status> pending = rank0.session().DispatchAsync(dispatch);
  ASSERT_EQ(WaitForOpsRunning((*world)[0].client->stub(), rank0.session().id(), 1), 1);
  ASSERT_EQ(pending.wait_for(std::chrono::milliseconds(0)), std::future_status::timeout)
      << "dispatch finished without rank 1";
  (*world)[1].runner.reset();  // rank 1's frontend ends its session
  ASSERT_EQ(pending.wait_for(std::chrono::seconds(5)), std::future_status::ready)
      << "rank 0's dispatch still waits for a peer that left";
  EXPECT_EPD_ERROR(pending.get(), StatusCode::kUnavailable, "rank 1", "session");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));

  // A new rank-1 frontend joins and the group works again.
  auto runner = example::RankRunner::Create(*(*world)[1].client, p, 1, options);
  ASSERT_TRUE(runner.ok()) << runner.status().ToString();
  (*world)[1].runner = std::move(runner).value();
  EXPECT_EPD_OK(RunGoodLayer(*world, 1));
}

}  // namespace
}  // namespace epd::testing
