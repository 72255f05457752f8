// Persistence (docs/design.md §2): a handle created with the persistent flag and a name outlives
// its session; a new session attaches to it by name without any allocation
// (GetStats().allocations unchanged) and runs layers with it.
#include <gtest/gtest.h>

#include "tests/integration/client_test_support.h"

namespace epd::testing {
namespace {

using example::Problem;

TEST(PersistentHandleTest, NewSessionAttachesByNameWithoutAllocating) {
  auto daemon = DaemonProcess::Start({}, 2);
  ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
  auto client = ConnectOrDie((*daemon)->address());
  ASSERT_NE(client, nullptr);

  Problem p;
  p.ranks = 2;
  p.experts = 4;
  p.hidden = 64;
  p.max_tokens = 16;
  p.top_k = 2;
  p.layout = v1::LAYOUT_RANK_MAJOR;
  example::RankRunnerOptions options;
  options.group = UniqueName("persist");
  options.persistent_group = true;
  options.handle_name = UniqueName("moe-layer");
  options.persistent_handle = true;

  {
    auto world = MakeRanks((*daemon)->address(), p, options);
    ASSERT_TRUE(world.ok()) << world.status().ToString();
    ASSERT_EPD_OK(RunGoodLayer(*world, 0));
  }  // both frontends exit
  v1::Stats stats =
      WaitForStats(*client, [](const v1::Stats& s) { return s.sessions_open() == 0; });
  ASSERT_EQ(stats.sessions_open(), 0u);
  EXPECT_EQ(HandlesOf(*client, options.group), 2) << "persistent handles died with the session";

  // Restarted frontends: attaching allocates nothing.
  auto session0 = client->OpenSession(0, "restarted-0");
  auto session1 = client->OpenSession(1, "restarted-1");
  ASSERT_TRUE(session0.ok() && session1.ok());
  stats = *client->GetStats();
  const uint64_t allocations = stats.allocations();
  const int64_t live_bytes = stats.live_bytes();
  auto attached0 = (*session0)->AttachHandle(options.handle_name);
  auto attached1 = (*session1)->AttachHandle(options.handle_name);
  ASSERT_TRUE(attached0.ok()) << attached0.status().ToString();
  ASSERT_TRUE(attached1.ok()) << attached1.status().ToString();
  stats = *client->GetStats();
  EXPECT_EQ(stats.allocations(), allocations);
  EXPECT_EQ(stats.live_bytes(), live_bytes);
  EXPECT_TRUE(attached0->persistent());
  EXPECT_EQ(attached0->name(), options.handle_name);
  EXPECT_EQ(attached0->group(), options.group);
  EXPECT_EQ(attached1->group_rank(), 1);

  // The attached region is the one the first frontends filled: rank-major recv_counts of the
  // last dispatch are still there.
  auto view = HandleView::Open(*attached0);
  ASSERT_TRUE(view.ok()) << view.status().ToString();
  EXPECT_EQ((*view)->recv_counts()[0], example::TokensFor(p, 0, 0));
  EXPECT_EQ((*view)->recv_counts()[1], example::TokensFor(p, 1, 0));

  // While attached, no other session can take it.
  auto intruder = client->OpenSession(0, "intruder");
  ASSERT_TRUE(intruder.ok());
  EXPECT_EPD_ERROR((*intruder)->AttachHandle(options.handle_name).status(),
                   StatusCode::kFailedPrecondition, options.handle_name, "attached");
  EXPECT_EPD_ERROR((*intruder)->AttachHandle("no-such-handle").status(), StatusCode::kNotFound,
                   "no-such-handle");
  // A second persistent handle of the same name and rank is refused.
  EXPECT_EPD_ERROR((*intruder)->CreateHandle(options.group, options.handle_name, true).status(),
                   StatusCode::kAlreadyExists, options.handle_name);
  (*intruder)->Close().IgnoreError();
  ASSERT_EPD_OK((*session0)->Close());
  ASSERT_EPD_OK((*session1)->Close());

  // New frontends attach (RankRunner falls back to AttachHandle) and run layers.
  {
    auto world = MakeRanks((*daemon)->address(), p, options);
    ASSERT_TRUE(world.ok()) << world.status().ToString();
    EXPECT_EPD_OK(RunGoodLayer(*world, 1));
    EXPECT_EPD_OK(RunGoodLayer(*world, 2, /*fenced=*/true));
  }
  EXPECT_EQ(HandlesOf(*client, options.group), 2);
}

// DestroyHandle ends a persistent handle for good: its memory is freed, the group no longer
// counts it and can then be destroyed.
TEST(PersistentHandleTest, DestroyingAPersistentHandleReleasesIt) {
  auto daemon = DaemonProcess::Start({}, 1);
  ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
  auto client = ConnectOrDie((*daemon)->address());
  ASSERT_NE(client, nullptr);
  auto session = client->OpenSession(0, "owner");
  ASSERT_TRUE(session.ok());
  Problem p;
  p.ranks = 1;
  p.experts = 2;
  p.top_k = 2;
  const std::string group = UniqueName("persist");
  ASSERT_TRUE((*session)->CreateGroup(p.Config(group), /*persistent=*/true).ok());
  const int64_t live_before = client->GetStats()->live_bytes();
  auto handle = (*session)->CreateHandle(group, "doomed", /*persistent=*/true);
  ASSERT_TRUE(handle.ok()) << handle.status().ToString();
  EXPECT_GT(client->GetStats()->live_bytes(), live_before);
  // What the handle says it holds is what the daemon's allocations grew by.
  EXPECT_EQ(static_cast<int64_t>(handle->held_bytes()),
            client->GetStats()->live_bytes() - live_before);
  EXPECT_EQ(HandlesOf(*client, group), 1);

  ASSERT_EPD_OK((*session)->DestroyHandle(handle->handle_id()));
  EXPECT_EQ(client->GetStats()->live_bytes(), live_before);
  EXPECT_EQ(HandlesOf(*client, group), 0);
  EXPECT_EPD_ERROR((*session)->AttachHandle("doomed").status(), StatusCode::kNotFound, "doomed");
  EXPECT_EPD_OK((*session)->DestroyGroup(group));
  EXPECT_EQ(HandlesOf(*client, group), -1);
}

}  // namespace
}  // namespace epd::testing
