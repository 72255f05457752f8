// The engine's control plane over the cpu backend: sessions and the scoping of their ids,
// cleanup on close, persistent handles, groups, idle expiry and shutdown.
#include <gmock/gmock.h>

#include "tests/unit/engine_fixture.h"
#include "tests/unit/forwarding_backend.h"

namespace epd::engine_testing {
namespace {

TEST_F(EngineTest, SessionsRecordTheirPeer) {
  auto session = engine_->OpenSession(1, "peer", /*unary=*/true, SessionPeer{1234, 1000, 100});
  ASSERT_TRUE(session.ok());
  bool found = false;
  for (const SessionSummary& s : engine_->ListSessions()) {
    if (s.id != session->id) continue;
    found = true;
    EXPECT_EQ(s.rank, 1);
    EXPECT_TRUE(s.unary);
    EXPECT_EQ(s.peer.pid, 1234);
    EXPECT_EQ(s.peer.uid, 1000);
    EXPECT_EQ(s.peer.gid, 100);
  }
  EXPECT_TRUE(found);
  ASSERT_TRUE(engine_->CloseSession(session->id, "done").ok());
  EXPECT_EQ(engine_->ListSessions().size(), 2u);
}

TEST_F(EngineTest, IdsAreScopedToTheirSession) {
  Frontend& a = *frontends_[0];
  Frontend& b = *frontends_[1];
  // Session b's buffer and handle ids mean nothing in session a.
  DispatchRequest foreign = a.Dispatch(1);
  foreign.handle_id = b.handle + 1000;
  Status status = engine_->SubmitDispatch(a.session, foreign, {}, [](Status) {});
  EXPECT_EQ(status.code(), StatusCode::kNotFound);
  EXPECT_NE(status.message().find("handle_id"), std::string::npos);
  UpdateRequest update = a.Update(1);
  update.topk_idx.buffer_id = 999;
  status = engine_->SubmitUpdate(a.session, update, {}, [](Status) {});
  EXPECT_EQ(status.code(), StatusCode::kNotFound);
  EXPECT_NE(status.message().find("topk_idx.buffer_id = 999"), std::string::npos);
  EXPECT_EQ(engine_->ReleaseBuffer(a.session, 12345).code(), StatusCode::kNotFound);
}

TEST_F(EngineTest, ClosingASessionFailsPeersWaitingInACollective) {
  FillInputs(2);
  RunLayer(2);
  OpOptions blocking;
  blocking.blocking = true;
  Waiter w;
  // The layer's ops were answered: none of them may still count as running.
  ASSERT_EQ(WaitForOpsRunning(*engine_, frontends_[0]->session, 0), 0u);
  const auto start = Clock::now();
  ASSERT_TRUE(
      engine_
          ->SubmitDispatch(frontends_[0]->session, frontends_[0]->Dispatch(2), blocking, w.Done())
          .ok());
  ASSERT_EQ(WaitForOpsRunning(*engine_, frontends_[0]->session, 1), 1u);
  ASSERT_TRUE(engine_->CloseSession(frontends_[1]->session, "connection lost").ok());
  Status status = w.Get();
  EXPECT_LT(Clock::now() - start, milliseconds(1500)) << "should not wait for the op timeout";
  EXPECT_EQ(status.code(), StatusCode::kUnavailable);
  EXPECT_NE(status.message().find("rank 1's session"), std::string::npos) << status.message();
  EXPECT_NE(status.message().find("connection lost"), std::string::npos);
  // Ops after close are NOT_FOUND.
  EXPECT_EQ(
      engine_->SubmitDispatch(frontends_[1]->session, frontends_[1]->Dispatch(2), {}, [](Status) {})
          .code(),
      StatusCode::kNotFound);
  // A new frontend for rank 1 brings the group back.
  frontends_[1] = std::make_unique<Frontend>(*engine_, 1);
  frontends_[1]->handle = engine_->CreateHandle(frontends_[1]->session, "g", 1, "", false)->id;
  FillInputs(2);
  RunLayer(2);
  ExpectWeightedSums(2);
}

TEST_F(EngineTest, ClosingASessionFreesWhatItCreated) {
  const int64_t before = engine_->Stats().live_bytes;
  Frontend extra(*engine_, 0);
  // Its own group: rank 0 of "g" belongs to frontends_[0].
  ASSERT_TRUE(engine_->CreateGroup(extra.session, Config("freed"), false).ok());
  auto handle = engine_->CreateHandle(extra.session, "freed", 0, "", false);
  ASSERT_TRUE(handle.ok());
  ASSERT_TRUE(engine_->CreateFence(extra.session).ok());
  EXPECT_GT(engine_->Stats().live_bytes, before);
  ASSERT_TRUE(engine_->CloseSession(extra.session, "done").ok());
  EXPECT_EQ(engine_->Stats().live_bytes, before);
  EXPECT_EQ(engine_->CloseSession(extra.session, "again").code(), StatusCode::kNotFound);
}

TEST_F(EngineTest, PersistentHandlesSurviveTheirSessionAndAttachWithoutAllocating) {
  Frontend& f = *frontends_[0];
  auto created = engine_->CreateHandle(f.session, "g", 0, "layer0", /*persistent=*/true);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  EXPECT_EQ(engine_->CreateHandle(f.session, "g", 0, "layer0", true).status().code(),
            StatusCode::kAlreadyExists);
  frontends_[0].reset();  // the session ends
  const EngineStats before = engine_->Stats();
  Frontend again(*engine_, 0);
  auto attached = engine_->AttachHandle(again.session, "layer0");
  ASSERT_TRUE(attached.ok()) << attached.status().ToString();
  EXPECT_TRUE(attached->persistent);
  EXPECT_EQ(attached->source.shm_name, created->source.shm_name);
  EXPECT_EQ(engine_->Stats().allocations, before.allocations);
  // Rank 1 has no handle of that name.
  EXPECT_EQ(engine_->AttachHandle(frontends_[1]->session, "layer0").status().code(),
            StatusCode::kNotFound);
}

TEST_F(EngineTest, HandlesOnlyForTheSessionsRankAndGroupMembers) {
  auto other = engine_->CreateHandle(frontends_[0]->session, "g", 1, "", false);
  EXPECT_EQ(other.status().code(), StatusCode::kPermissionDenied);
  GroupConfig solo = Config("solo");
  solo.ranks = {1};
  ASSERT_TRUE(engine_->CreateGroup(frontends_[1]->session, solo, false).ok());
  auto outsider = engine_->CreateHandle(frontends_[0]->session, "solo", -1, "", false);
  EXPECT_EQ(outsider.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(outsider.status().message().find("rank 0 is not a member of group 'solo'"),
            std::string::npos);
  EXPECT_EQ(engine_->CreateHandle(frontends_[0]->session, "nope", -1, "", false).status().code(),
            StatusCode::kNotFound);
}

TEST_F(EngineTest, GroupsAreIdempotentByShapeAndDieWithTheirSession) {
  GroupConfig mine = Config("mine");
  ASSERT_TRUE(engine_->CreateGroup(frontends_[0]->session, mine, false).ok());
  EXPECT_TRUE(engine_->CreateGroup(frontends_[1]->session, mine, false).ok());
  mine.hidden = 32;
  EXPECT_EQ(engine_->CreateGroup(frontends_[1]->session, mine, false).code(),
            StatusCode::kAlreadyExists);
  EXPECT_EQ(engine_->ListGroups().size(), 2u);
  frontends_[0].reset();
  EXPECT_EQ(engine_->ListGroups().size(), 1u);
}

TEST_F(EngineTest, ASessionGroupIsNotAnsweredAsPersistent) {
  const GroupConfig shared = Config("shared");
  ASSERT_TRUE(engine_->CreateGroup(frontends_[0]->session, shared, false).ok());
  const Status persistent = engine_->CreateGroup(frontends_[1]->session, shared, true);
  EXPECT_EQ(persistent.code(), StatusCode::kFailedPrecondition) << persistent.ToString();
  EXPECT_NE(persistent.message().find("persistent = true"), std::string::npos);
  EXPECT_NE(persistent.message().find("'shared'"), std::string::npos);
  // The other way round is sharing: a session group may join a persistent one.
  const GroupConfig kept = Config("kept");
  ASSERT_TRUE(engine_->CreateGroup(frontends_[0]->session, kept, true).ok());
  EXPECT_TRUE(engine_->CreateGroup(frontends_[1]->session, kept, false).ok());
  EXPECT_TRUE(engine_->CreateGroup(frontends_[1]->session, kept, true).ok());
  frontends_[0].reset();
  std::vector<std::string> names;
  for (const GroupSummary& group : engine_->ListGroups()) names.push_back(group.config.name);
  EXPECT_THAT(names, ::testing::Contains("kept"));
  EXPECT_THAT(names, ::testing::Not(::testing::Contains("shared")));
}

TEST_F(EngineTest, DestroyingAPersistentHandleReleasesItsGroup) {
  GroupConfig extra = Config("extra");
  ASSERT_TRUE(engine_->CreateGroup(frontends_[0]->session, extra, true).ok());
  auto handle = engine_->CreateHandle(frontends_[0]->session, "extra", 0, "h", true);
  ASSERT_TRUE(handle.ok());
  EXPECT_EQ(engine_->DestroyGroup(frontends_[0]->session, "extra").code(),
            StatusCode::kFailedPrecondition);
  ASSERT_TRUE(engine_->DestroyHandle(frontends_[0]->session, handle->id).ok());
  EXPECT_TRUE(engine_->DestroyGroup(frontends_[0]->session, "extra").ok());
  EXPECT_EQ(engine_->AttachHandle(frontends_[0]->session, "h").status().code(),
            StatusCode::kNotFound);
}

using testing::SlowGroupBackend;


TEST(EngineGroupsTest, ConcurrentCreatesOfOneGroupBuildItOnceAndAllSucceed) {
  auto slow = std::make_unique<SlowGroupBackend>(CreateCpuBackend({4, milliseconds(2000)}).value());
  SlowGroupBackend* backend = slow.get();
  auto engine = Engine::Create(std::move(slow), EngineOptions{}).value();
  GroupConfig config = Config("shared");
  config.ranks = {0, 1, 2, 3};
  std::vector<std::future<Status>> creates;
  for (int r = 0; r < 4; ++r) {
    creates.push_back(std::async(std::launch::async, [&] {
      return engine->CreateGroup(std::nullopt, config, /*persistent=*/true);
    }));
  }
  for (auto& create : creates) EXPECT_TRUE(create.get().ok());
  EXPECT_EQ(backend->group_builds(), 1);
  EXPECT_EQ(engine->ListGroups().size(), 1u);
}

TEST_F(EngineTest, IdleUnarySessionsExpire) {
  const uint64_t open_before = engine_->Stats().sessions_open;
  auto session = engine_->OpenSession(0, "grpcurl", /*unary=*/true);
  ASSERT_TRUE(session.ok());
  EXPECT_TRUE(engine_->Touch(session->id).ok());
  // The reaper closes it once idle (300 ms here); Stats() does not touch it.
  const auto deadline = Clock::now() + milliseconds(10'000);
  while (engine_->Stats().sessions_open > open_before && Clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(10));
  }
  EXPECT_EQ(engine_->Touch(session->id).code(), StatusCode::kNotFound);
}

TEST_F(EngineTest, ShutdownCancelsOpsStuckPastTheDrainTimeout) {
  Frontend& f = *frontends_[0];
  FenceInfo fence = engine_->CreateFence(f.session).value();
  OpOptions fenced;
  fenced.wait = FenceOp{fence.id, 5};  // never signalled
  fenced.blocking = true;
  Waiter stuck_update, stuck_dispatch;
  FillInputs(2);
  OpOptions blocking;
  blocking.blocking = true;
  Waiter bound;
  ASSERT_TRUE(
      engine_
          ->SubmitUpdate(frontends_[1]->session, frontends_[1]->Update(2), blocking, bound.Done())
          .ok());
  ASSERT_TRUE(bound.Get().ok());
  ASSERT_TRUE(engine_->SubmitUpdate(f.session, f.Update(2), fenced, stuck_update.Done()).ok());
  // Rank 1 waits in the collective for rank 0, which is stuck behind its fence.
  ASSERT_TRUE(engine_
                  ->SubmitDispatch(frontends_[1]->session, frontends_[1]->Dispatch(2), blocking,
                                   stuck_dispatch.Done())
                  .ok());
  ASSERT_EQ(WaitForOpsRunning(*engine_, f.session, 1), 1u);
  ASSERT_EQ(WaitForOpsRunning(*engine_, frontends_[1]->session, 1), 1u);
  const auto start = Clock::now();
  engine_->Shutdown();
  EXPECT_LT(Clock::now() - start, milliseconds(1500)) << "must not wait for the op timeout";
  EXPECT_EQ(stuck_update.Get().code(), StatusCode::kUnavailable);
  EXPECT_EQ(stuck_dispatch.Get().code(), StatusCode::kUnavailable);
}

TEST_F(EngineTest, ShutdownRefusesNewWork) {
  engine_->Shutdown();
  EXPECT_EQ(engine_->OpenSession(0, "late", false).status().code(), StatusCode::kUnavailable);
}

}  // namespace
}  // namespace epd::engine_testing
