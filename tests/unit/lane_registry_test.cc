// LaneRegistry (the owner of the backends' per-(group, rank) lanes) and the engine's per-session
// bound on ops in flight.
#include "daemon/core/lane_registry.h"

#include <gtest/gtest.h>

#include <atomic>
#include <future>

#include "common/fence_page.h"
#include "daemon/core/task_thread.h"
#include "tests/unit/engine_fixture.h"

namespace epd {
namespace {

// A lane as the backends have them: a thread that runs posted tasks; counts its destruction.
class TestLane {
 public:
  explicit TestLane(std::atomic<int>& destroyed) : destroyed_(destroyed), thread_("test-lane") {}
  ~TestLane() { destroyed_.fetch_add(1); }
  void Post(std::function<void()> task) { ASSERT_TRUE(thread_.TryPost(std::move(task))); }
  bool OnThread() const { return thread_.OnThread(); }

 private:
  std::atomic<int>& destroyed_;
  TaskThread thread_;  // joined before destroyed_ counts (member order)
};

TEST(LaneRegistryTest, RetiringFromAnotherThreadDestroysTheLaneAfterItsQueue) {
  std::atomic<int> destroyed{0};
  LaneRegistry<TestLane> lanes;
  TestLane* lane = lanes.Add(std::make_unique<TestLane>(destroyed));
  std::atomic<bool> ran{false};
  lane->Post([&] { ran = true; });
  lanes.Retire(lane);
  EXPECT_TRUE(ran.load()) << "the queued task ran before the lane went";
  EXPECT_EQ(destroyed.load(), 1);
  EXPECT_EQ(lanes.live(), 0u);
}

// A lane's own completion may drop the last reference to its group, which retires the lane:
// it cannot join itself, so it is parked and destroyed by the next Add (or at the end).
TEST(LaneRegistryTest, ALaneRetiredOnItsOwnThreadIsDestroyedLaterWithoutDeadlock) {
  std::atomic<int> destroyed{0};
  LaneRegistry<TestLane> lanes;
  TestLane* lane = lanes.Add(std::make_unique<TestLane>(destroyed));
  std::promise<void> retired;
  lane->Post([&] {
    lanes.Retire(lane);
    retired.set_value();
  });
  ASSERT_EQ(retired.get_future().wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_EQ(destroyed.load(), 0) << "not destroyed from its own thread";
  EXPECT_EQ(lanes.live(), 0u);
  int visited = 0;
  lanes.ForEach([&](const TestLane&) { ++visited; });
  EXPECT_EQ(visited, 1) << "a parked lane is still probed";
  lanes.Add(std::make_unique<TestLane>(destroyed));
  EXPECT_EQ(destroyed.load(), 1) << "the next Add destroyed the parked lane";
  lanes.DrainAll();
  EXPECT_EQ(destroyed.load(), 2);
}

// Draining runs every lane's queue; a task that retires another lane meanwhile is harmless.
TEST(LaneRegistryTest, DrainAllRunsQueuesEvenWhenTheyRetireOtherLanes) {
  std::atomic<int> destroyed{0};
  LaneRegistry<TestLane> lanes;
  TestLane* first = lanes.Add(std::make_unique<TestLane>(destroyed));
  TestLane* second = lanes.Add(std::make_unique<TestLane>(destroyed));
  std::atomic<int> ran{0};
  first->Post([&] {
    lanes.Retire(second);
    ++ran;
  });
  second->Post([&] {
    lanes.Retire(first);
    ++ran;
  });
  lanes.DrainAll();
  EXPECT_EQ(ran.load(), 2);
  EXPECT_EQ(destroyed.load(), 2);
}

using engine_testing::EngineTest;
using engine_testing::Frontend;
using engine_testing::Waiter;

// limits.ops_in_flight_per_session: a session's ops waiting on a fence it never signals hold
// their places; one more is refused with RESOURCE_EXHAUSTED naming the key; they complete once
// the fence is signalled and the session can post again.
TEST(OpsInFlightLimitTest, OneMoreThanTheLimitIsRefusedNamingTheKey) {
  auto backend = CreateCpuBackend({2, std::chrono::milliseconds(20'000)});
  ASSERT_TRUE(backend.ok());
  EngineOptions options;
  options.limits.ops_in_flight = 2;
  options.drain_timeout = std::chrono::milliseconds(200);
  auto engine = Engine::Create(std::move(backend).value(), options).value();
  ASSERT_TRUE(engine->CreateGroup(std::nullopt, engine_testing::Config(), true).ok());
  Frontend f(*engine, 0);
  f.handle = engine->CreateHandle(f.session, "g", 0, "", false).value().id;
  const engine_testing::MappedFence mapped = engine_testing::MapNewFence(*engine, f.session);
  const FenceInfo& fence = mapped.info;
  uint64_t* counter = mapped.counter;
  OpOptions gated;
  gated.wait = FenceOp{fence.id, 1};
  gated.blocking = true;
  Waiter first, second, refused_waiter;
  ASSERT_TRUE(engine->SubmitUpdate(f.session, f.Update(1), gated, first.Done()).ok());
  ASSERT_TRUE(engine->SubmitUpdate(f.session, f.Update(1), gated, second.Done()).ok());
  const Status refused =
      engine->SubmitUpdate(f.session, f.Update(1), gated, refused_waiter.Done());
  EXPECT_EQ(refused.code(), StatusCode::kResourceExhausted) << refused.ToString();
  EXPECT_NE(refused.message().find("limits.ops_in_flight_per_session"), std::string::npos)
      << refused.ToString();
  uint64_t in_flight = 0;
  for (const SessionSummary& s : engine->ListSessions()) {
    if (s.id == f.session) in_flight = s.ops_in_flight;
  }
  EXPECT_EQ(in_flight, 2u);

  std::atomic_ref<uint64_t>(*counter).store(1, std::memory_order_release);
  EXPECT_TRUE(first.Get().ok());
  EXPECT_TRUE(second.Get().ok());
  Waiter after;
  ASSERT_TRUE(engine->SubmitUpdate(f.session, f.Update(1), gated, after.Done()).ok());
  EXPECT_TRUE(after.Get().ok());
}

}  // namespace
}  // namespace epd
