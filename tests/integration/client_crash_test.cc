// A frontend process killed (SIGKILL) mid-sequence: the daemon frees what its session held
// (stats live_bytes back down, its handle gone), the peer waiting for it in a collective gets
// a clear error instead of hanging, and a new frontend for that rank works afterwards; killed
// frontends round after round leave the daemon no bytes, descriptors or threads.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <chrono>
#include <thread>

#include "tests/integration/client_test_support.h"

namespace epd::testing {
namespace {

using example::Problem;

std::unique_ptr<ChildProcess> SpawnHelper(const DaemonProcess& daemon, const Problem& p,
                                          const std::string& group, int rank,
                                          std::string* shm_name) {
  auto child = ChildProcess::Spawn(
      {HelperClientPath(), "--address", daemon.address(), "--group", group, "--rank",
       std::to_string(rank), "--ranks", std::to_string(p.ranks), "--experts",
       std::to_string(p.experts), "--hidden", std::to_string(p.hidden), "--tokens",
       std::to_string(p.max_tokens), "--topk", std::to_string(p.top_k)});
  if (!child.ok()) {
    ADD_FAILURE() << child.status().ToString();
    return nullptr;
  }
  auto line = (*child)->ReadLine(15'000);
  if (!line.ok() || line->rfind("READY ", 0) != 0) {
    ADD_FAILURE() << "helper did not get ready: " << (line.ok() ? *line : line.status().ToString());
    return nullptr;
  }
  *shm_name = line->substr(6);
  return std::move(child).value();
}

TEST(ClientCrashTest, KilledFrontendIsCleanedUpAndPeersKeepWorking) {
  auto daemon = DaemonProcess::Start({}, 2);
  ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
  auto client = ConnectOrDie((*daemon)->address());
  ASSERT_NE(client, nullptr);

  const Problem p = SmallProblem();
  example::RankRunnerOptions options;
  options.group = UniqueName("crash");

  // Rank 0 lives in this process (and owns the group); rank 1 is a separate process.
  std::vector<RankClient> world(2);
  world[0].client = ConnectOrDie((*daemon)->address());
  ASSERT_NE(world[0].client, nullptr);
  auto rank0 = example::RankRunner::Create(*world[0].client, p, 0, options);
  ASSERT_TRUE(rank0.ok()) << rank0.status().ToString();
  world[0].runner = std::move(rank0).value();
  auto stats = client->GetStats();
  ASSERT_TRUE(stats.ok());
  const int64_t live_without_helper = stats->live_bytes();

  std::string helper_shm;
  auto helper = SpawnHelper(**daemon, p, options.group, 1, &helper_shm);
  ASSERT_NE(helper, nullptr);
  stats = client->GetStats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->sessions_open(), 2u);
  EXPECT_GT(stats->live_bytes(), live_without_helper);
  EXPECT_EQ(HandlesOf(*client, options.group), 2);

  // Rank 0 posts its dispatch: it must wait for rank 1, which then dies.
  example::RankRunner& r0 = *world[0].runner;
  ASSERT_EPD_OK(r0.Stage(example::MakeInputs(p, 3, 0, 0, 8, true)));
  ASSERT_EPD_OK(
      r0.session().Update(r0.handle_id(), r0.topk_ref(8), r0.weights_ref(8), BlockingOptions()));
  v1::DispatchRequest dispatch;
  dispatch.set_handle_id(r0.handle_id());
  *dispatch.mutable_x() = r0.x_ref(8);
  *dispatch.mutable_options() = BlockingOptions();
  std::future<Status> pending = r0.session().DispatchAsync(dispatch);
  ASSERT_EQ(WaitForOpsRunning(world[0].client->stub(), r0.session().id(), 1), 1);
  ASSERT_EQ(pending.wait_for(std::chrono::milliseconds(0)), std::future_status::timeout);
  helper->Kill();
  shm_unlink(helper_shm.c_str());  // the killed process could not clean up its name

  ASSERT_EQ(pending.wait_for(std::chrono::seconds(5)), std::future_status::ready)
      << "rank 0's dispatch still waits for a killed peer";
  EXPECT_EPD_ERROR(pending.get(), StatusCode::kUnavailable, "rank 1");

  const v1::Stats after = WaitForStats(*client, [&](const v1::Stats& s) {
    return s.sessions_open() == 1 && s.live_bytes() == live_without_helper;
  });
  EXPECT_EQ(after.sessions_open(), 1u);
  EXPECT_EQ(after.live_bytes(), live_without_helper) << "the killed frontend's memory leaked";
  EXPECT_EQ(HandlesOf(*client, options.group), 1);

  // A new rank-1 frontend joins the same group; the pair runs layers again.
  world[1].client = ConnectOrDie((*daemon)->address());
  ASSERT_NE(world[1].client, nullptr);
  auto rank1 = example::RankRunner::Create(*world[1].client, p, 1, options);
  ASSERT_TRUE(rank1.ok()) << rank1.status().ToString();
  world[1].runner = std::move(rank1).value();
  EXPECT_EPD_OK(RunGoodLayer(world, 1));
  EXPECT_EPD_OK(RunGoodLayer(world, 2, /*fenced=*/true));
}

TEST(ClientCrashTest, ManyKilledFrontendsLeaveNothingBehind) {
  auto daemon = DaemonProcess::Start({}, 2);
  ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
  auto client = ConnectOrDie((*daemon)->address());
  ASSERT_NE(client, nullptr);
  auto before = client->GetStats();
  ASSERT_TRUE(before.ok());

  const Problem p = SmallProblem();
  // Descriptors and threads once two rounds ran (gRPC's own thread pools grow on demand by a
  // thread or two meanwhile; a dead frontend's sockets close a little after it, so counts are
  // polled down): later rounds must not hold more descriptors, nor more than gRPC's slack of
  // threads. A leak per session or per round exceeds it by the last round.
  constexpr int kRounds = 6, kReferenceRound = 1, kGrpcThreadSlack = 2;
  const int idle_fds = (*daemon)->open_fds();
  int fds = -1, threads = -1;
  for (int round = 0; round < kRounds; ++round) {
    const std::string group = UniqueName("killed");
    std::string shm0, shm1;
    auto a = SpawnHelper(**daemon, p, group, 0, &shm0);
    auto b = SpawnHelper(**daemon, p, group, 1, &shm1);
    ASSERT_NE(a, nullptr);
    ASSERT_NE(b, nullptr);
    a->Kill();
    b->Kill();
    shm_unlink(shm0.c_str());
    shm_unlink(shm1.c_str());
    const v1::Stats after = WaitForStats(*client, [&](const v1::Stats& s) {
      return s.sessions_open() == 0 && s.live_bytes() == before->live_bytes();
    });
    EXPECT_EQ(after.sessions_open(), 0u) << "round " << round;
    EXPECT_EQ(after.live_bytes(), before->live_bytes()) << "round " << round;
    EXPECT_EQ(HandlesOf(*client, group), -1) << "round " << round;
    if (round == kReferenceRound) {
      fds = WaitAtMost([&] { return (*daemon)->open_fds(); }, idle_fds);
      threads = (*daemon)->threads();
    }
  }
  EXPECT_LE(WaitAtMost([&] { return (*daemon)->open_fds(); }, fds), fds)
      << "the daemon keeps descriptors of killed frontends";
  EXPECT_LE(WaitAtMost([&] { return (*daemon)->threads(); }, threads + kGrpcThreadSlack),
            threads + kGrpcThreadSlack)
      << "the daemon keeps threads of killed frontends";
}

}  // namespace
}  // namespace epd::testing
