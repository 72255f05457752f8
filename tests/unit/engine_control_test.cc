// The engine's control plane: group membership can never be leaked by a handle that failed
// half way, creations and releases run on the control worker (never on the caller), and
// concurrent creates of one group share one build without blocking their callers.
#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "daemon/backends/cpu/cpu_backend.h"
#include "daemon/core/engine.h"
#include "tests/unit/engine_fixture.h"
#include "tests/unit/forwarding_backend.h"

namespace epd {
namespace {

using std::chrono::milliseconds;

using engine_testing::Config;
using testing::SlowGroupBackend;

int HandlesOf(const Engine& engine, std::string_view group) {
  for (const GroupSummary& g : engine.ListGroups()) {
    if (g.config.name == group) return g.handles;
  }
  return -1;
}

// Runs a hook once, in the middle of the next CreateHandle (after the backend built the
// handle, before the engine attaches it): the window in which a session can close or a
// concurrent create can take the name. Records the threads that create and free memory.
class InterposingBackend : public testing::ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;

  void OnNextCreateHandle(std::function<void()> hook) {
    std::lock_guard lock(mutex_);
    hook_ = std::move(hook);
  }
  std::thread::id last_create_thread() {
    std::lock_guard lock(mutex_);
    return create_thread_;
  }
  std::thread::id last_free_thread() {
    std::lock_guard lock(mutex_);
    return free_thread_;
  }
  int fences_freed() const { return fences_freed_; }

  StatusOr<std::unique_ptr<BackendHandle>> CreateHandle(BackendGroup& g, int r) override {
    auto handle = ForwardingBackend::CreateHandle(g, r);
    std::function<void()> hook;
    {
      std::lock_guard lock(mutex_);
      create_thread_ = std::this_thread::get_id();
      hook = std::move(hook_);
      hook_ = nullptr;
    }
    if (hook) hook();
    return handle;
  }

  // Fence pages that note where they are freed.
  StatusOr<std::unique_ptr<ExportedMemory>> CreateFence(int r) override {
    EPD_ASSIGN_OR_RETURN(auto page, ForwardingBackend::CreateFence(r));
    return std::unique_ptr<ExportedMemory>(new NotingPage(std::move(page), this));
  }

 private:
  class NotingPage : public ExportedMemory {
   public:
    NotingPage(std::unique_ptr<ExportedMemory> inner, InterposingBackend* owner)
        : inner_(std::move(inner)), owner_(owner) {}
    ~NotingPage() override {
      std::lock_guard lock(owner_->mutex_);
      owner_->free_thread_ = std::this_thread::get_id();
      ++owner_->fences_freed_;
    }
    void* data() const override { return inner_->data(); }
    size_t size() const override { return inner_->size(); }
    int device() const override { return inner_->device(); }
    MemorySource Describe() const override { return inner_->Describe(); }

   private:
    std::unique_ptr<ExportedMemory> inner_;
    InterposingBackend* owner_;
  };

  std::mutex mutex_;
  std::function<void()> hook_;
  std::thread::id create_thread_, free_thread_;
  std::atomic<int> fences_freed_{0};
};

class EngineControlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto backend = std::make_unique<InterposingBackend>(
        CreateCpuBackend({2, milliseconds(2000)}).value());
    backend_ = backend.get();
    engine_ = Engine::Create(std::move(backend), EngineOptions{}).value();
    admin_ = engine_->OpenSession(0, "admin", /*unary=*/false).value().id;
    // Persistent, created by a session: that session's user may destroy it.
    ASSERT_TRUE(engine_->CreateGroup(admin_, Config("g"), /*persistent=*/true).ok());
  }

  InterposingBackend* backend_ = nullptr;
  std::unique_ptr<Engine> engine_;
  SessionId admin_ = 0;
};

TEST_F(EngineControlTest, SessionClosingDuringCreateHandleLeavesNoHandleCounted) {
  const SessionId doomed = engine_->OpenSession(0, "doomed", /*unary=*/false).value().id;
  backend_->OnNextCreateHandle(
      [&] { ASSERT_TRUE(engine_->CloseSession(doomed, "closed mid-create").ok()); });
  auto handle = engine_->CreateHandle(doomed, "g", 0, "", /*persistent=*/false);
  EXPECT_EQ(handle.status().code(), StatusCode::kNotFound) << handle.status().ToString();
  EXPECT_EQ(HandlesOf(*engine_, "g"), 0);
  Status destroyed = engine_->DestroyGroup(admin_, "g");
  EXPECT_TRUE(destroyed.ok()) << destroyed.ToString();
}

TEST_F(EngineControlTest, PersistentNameLostToAConcurrentCreateLeavesNoHandleCounted) {
  StatusOr<HandleInfo> winner = NotFoundError("not run");
  backend_->OnNextCreateHandle(
      [&] { winner = engine_->CreateHandle(admin_, "g", 0, "layer", /*persistent=*/true); });
  auto loser = engine_->CreateHandle(admin_, "g", 0, "layer", /*persistent=*/true);
  ASSERT_TRUE(winner.ok()) << winner.status().ToString();
  EXPECT_EQ(loser.status().code(), StatusCode::kAlreadyExists) << loser.status().ToString();
  EXPECT_EQ(HandlesOf(*engine_, "g"), 1);
  ASSERT_TRUE(engine_->DestroyHandle(admin_, winner->id).ok());
  Status destroyed = engine_->DestroyGroup(admin_, "g");
  EXPECT_TRUE(destroyed.ok()) << destroyed.ToString();
}

TEST_F(EngineControlTest, HandlesCountUntilTheyLeaveTheirGroup) {
  auto handle = engine_->CreateHandle(admin_, "g", 0, "", false);
  ASSERT_TRUE(handle.ok());
  EXPECT_EQ(HandlesOf(*engine_, "g"), 1);
  EXPECT_EQ(engine_->DestroyGroup(admin_, "g").message(), "group 'g' still has 1 handles");
  ASSERT_TRUE(engine_->DestroyHandle(admin_, handle->id).ok());
  EXPECT_EQ(HandlesOf(*engine_, "g"), 0);
  EXPECT_TRUE(engine_->DestroyGroup(admin_, "g").ok());
}

TEST_F(EngineControlTest, CreationsAndReleasesRunOnTheControlWorkerNotTheCaller) {
  auto handle = engine_->CreateHandle(admin_, "g", 0, "", false);
  ASSERT_TRUE(handle.ok());
  EXPECT_NE(backend_->last_create_thread(), std::this_thread::get_id());
  EXPECT_NE(backend_->last_create_thread(), std::thread::id());

  auto fence = engine_->CreateFence(admin_);
  ASSERT_TRUE(fence.ok());
  // The asynchronous form: the fence is gone from the session at once, its page is freed
  // on the control worker before `done` runs.
  std::promise<Status> destroyed;
  engine_->DestroyFence(admin_, fence->id, [&](Status s) { destroyed.set_value(s); });
  EXPECT_EQ(engine_->DestroyFence(admin_, fence->id).code(), StatusCode::kNotFound);
  auto future = destroyed.get_future();
  ASSERT_EQ(future.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_TRUE(future.get().ok());
  EXPECT_EQ(backend_->fences_freed(), 1);
  EXPECT_NE(backend_->last_free_thread(), std::this_thread::get_id());
  EXPECT_EQ(backend_->last_free_thread(), backend_->last_create_thread())
      << "released on the same control worker";

  // Closing a session frees its fences there too, and reports after they are freed.
  ASSERT_TRUE(engine_->CreateFence(admin_).ok());
  std::promise<void> closed;
  engine_->CloseSession(admin_, "test", [&](Status s) {
    EXPECT_TRUE(s.ok());
    EXPECT_EQ(backend_->fences_freed(), 2);
    closed.set_value();
  });
  EXPECT_EQ(engine_->Touch(admin_).code(), StatusCode::kNotFound) << "gone at once";
  ASSERT_EQ(closed.get_future().wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_NE(backend_->last_free_thread(), std::this_thread::get_id());
}

TEST_F(EngineControlTest, RefusedRequestsNameTheField) {
  EXPECT_EQ(engine_->CreateHandle(admin_, "", 0, "", false).status().message(),
            "group is empty: name the handle's group");
  EXPECT_EQ(engine_->CreateHandle(admin_, "g", 0, "", true).status().message(),
            "name is empty: a persistent handle needs a name");
  EXPECT_EQ(engine_->AttachHandle(admin_, "").status().code(), StatusCode::kInvalidArgument);
  MemorySource source;
  source.shm_name = "/epd-none";
  EXPECT_EQ(engine_->RegisterBuffer(admin_, source).status().message(),
            "source.size = 0: nothing to register");
}


TEST(EngineControlAsyncTest, ConcurrentCreatesShareOneBuildWithoutBlockingTheirCallers) {
  auto slow = std::make_unique<SlowGroupBackend>(CreateCpuBackend({4, milliseconds(2000)}).value());
  SlowGroupBackend* backend = slow.get();
  auto engine = Engine::Create(std::move(slow), EngineOptions{}).value();
  GroupConfig config = Config("shared");
  config.ranks = {0, 1, 2, 3};
  constexpr int kCallers = 4;
  std::vector<std::promise<StatusOr<GroupConfig>>> results(kCallers);
  const auto start = Clock::now();
  for (int i = 0; i < kCallers; ++i) {
    engine->CreateGroup(std::nullopt, config, /*persistent=*/true,
                        [&results, i](StatusOr<GroupConfig> created) {
                          results[i].set_value(std::move(created));
                        });
  }
  // Posting returns at once: no caller waited for the 200 ms build.
  EXPECT_LT(Clock::now() - start, milliseconds(150));
  for (auto& result : results) {
    auto future = result.get_future();
    ASSERT_EQ(future.wait_for(std::chrono::seconds(10)), std::future_status::ready);
    StatusOr<GroupConfig> created = future.get();
    ASSERT_TRUE(created.ok()) << created.status().ToString();
    EXPECT_EQ(created->name, "shared");
  }
  EXPECT_EQ(backend->group_builds(), 1);
  EXPECT_EQ(engine->ListGroups().size(), 1u);
}

// Folds fence signals the way the cuda backend does (the op itself writes its signal, here by
// the inner backend's SignalFence right after the op) and records what the pipeline handed it.
class SignalFoldingBackend : public testing::ForwardingBackend {
 public:
  SignalFoldingBackend(std::unique_ptr<Backend> inner, bool folds)
      : ForwardingBackend(std::move(inner)), folds_(folds) {}
  bool FoldsFenceSignals() const override { return folds_; }
  Status SignalFence(BackendHandle& h, ExportedMemory& f, uint64_t v) override {
    ++separate_signals;
    return ForwardingBackend::SignalFence(h, f, v);
  }
  Status UpdateHandle(BackendHandle& h, const UpdateArgs& a) override {
    return Fold(h, a.signal, ForwardingBackend::UpdateHandle(h, a));
  }
  Status Dispatch(BackendHandle& h, const DispatchArgs& a) override {
    return Fold(h, a.signal, ForwardingBackend::Dispatch(h, a));
  }
  Status Combine(BackendHandle& h, const CombineArgs& a) override {
    return Fold(h, a.signal, ForwardingBackend::Combine(h, a));
  }

  std::mutex mutex;
  std::vector<uint64_t> folded;  // the signal value each op carried (0: none)
  std::atomic<int> separate_signals{0};

 private:
  Status Fold(BackendHandle& h, const FenceSignal& signal, Status op) {
    {
      std::lock_guard lock(mutex);
      folded.push_back(signal.fence != nullptr ? signal.value : 0);
    }
    if (!op.ok() || signal.fence == nullptr) return op;
    return ForwardingBackend::SignalFence(h, *signal.fence, signal.value);
  }
  const bool folds_;
};

// `f`'s handle in a new one-rank persistent group `name`, with one token routed.
void JoinOneRankGroup(Engine& engine, engine_testing::Frontend& f, const std::string& name) {
  GroupConfig config = Config(name);
  config.ranks = {0};
  ASSERT_TRUE(engine.CreateGroup(std::nullopt, config, /*persistent=*/true).ok());
  f.handle = engine.CreateHandle(f.session, name, 0, "", false).value().id;
  for (int i = 0; i < engine_testing::kTopK; ++i) {
    f.topk()[i] = i % config.experts;
    f.weights()[i] = 1.0f;
  }
}

// JoinOneRankGroup, then one token routed.
void JoinAndRoute(Engine& engine, engine_testing::Frontend& f, const std::string& name) {
  ASSERT_NO_FATAL_FAILURE(JoinOneRankGroup(engine, f, name));
  engine_testing::Waiter update;
  ASSERT_TRUE(engine.SubmitUpdate(f.session, f.Update(1), OpOptions{}, update.Done()).ok());
  ASSERT_TRUE(update.Get().ok());
}

// A backend that folds fence signals gets each op's signal with the op and no separate
// SignalFence; one that does not gets none with the op and the pipeline signals after it.
// Either way the fence reaches each op's value in order.
TEST(EngineFenceSignalTest, SignalsGoWithTheOpOnlyToBackendsThatFoldThem) {
  for (const bool folds : {true, false}) {
    SCOPED_TRACE(folds ? "folding backend" : "plain backend");
    auto owned = std::make_unique<SignalFoldingBackend>(
        CreateCpuBackend({1, milliseconds(2000)}).value(), folds);
    SignalFoldingBackend& backend = *owned;
    auto engine = Engine::Create(std::move(owned), EngineOptions{}).value();
    engine_testing::Frontend f(*engine, 0);
    ASSERT_NO_FATAL_FAILURE(JoinOneRankGroup(*engine, f, "fold"));
    const engine_testing::MappedFence mapped = engine_testing::MapNewFence(*engine, f.session);
    const FenceInfo& fence = mapped.info;
    uint64_t* counter = mapped.counter;
    auto signal = [&](uint64_t value) {
      OpOptions options;
      options.signal = FenceOp{fence.id, value};
      return options;
    };
    engine_testing::Waiter update, dispatch, combine;
    ASSERT_TRUE(engine->SubmitUpdate(f.session, f.Update(1), signal(2), update.Done()).ok());
    ASSERT_TRUE(engine->SubmitDispatch(f.session, f.Dispatch(1), signal(3), dispatch.Done()).ok());
    ASSERT_TRUE(engine->SubmitCombine(f.session, f.Combine(1), signal(4), combine.Done()).ok());
    EXPECT_TRUE(update.Get().ok());
    EXPECT_TRUE(dispatch.Get().ok());
    EXPECT_TRUE(combine.Get().ok());
    for (int i = 0; i < 2000 && std::atomic_ref<uint64_t>(*counter).load() != 4; ++i) {
      std::this_thread::sleep_for(milliseconds(1));
    }
    EXPECT_EQ(std::atomic_ref<uint64_t>(*counter).load(), 4u);
    std::lock_guard lock(backend.mutex);
    EXPECT_EQ(backend.folded, folds ? std::vector<uint64_t>({2, 3, 4})
                                    : std::vector<uint64_t>({0, 0, 0}));
    EXPECT_EQ(backend.separate_signals.load(), folds ? 0 : 3);
  }
}

// The backend calls a test interposes on, in the order they came (any thread).
class CallLog {
 public:
  void Record(const char* call) {
    std::lock_guard lock(mutex_);
    calls_.push_back(call);
  }
  std::vector<std::string> TakeCalls() {
    std::lock_guard lock(mutex_);
    return std::exchange(calls_, {});
  }
  size_t CallCount() {
    std::lock_guard lock(mutex_);
    return calls_.size();
  }

 private:
  std::mutex mutex_;
  std::vector<std::string> calls_;
};

// Records the order of PrepareCollective and WaitFence; PrepareCollective fails while `fail`.
// After `background_next`, one preparation runs "in the background" until EndBackground, or
// until the shutdown ends it (as the cuda backend's shutdown ends a formation), or, unless
// `shutdown_ends_background`, until the backend is destroyed.
class PreparingBackend : public testing::ForwardingBackend, public CallLog {
 public:
  using ForwardingBackend::ForwardingBackend;
  ~PreparingBackend() override {
    if (ended_by_shutdown_.joinable()) ended_by_shutdown_.join();
    if (background_ != nullptr) background_(UnavailableError("the backend is destroyed"));
  }
  void BeginShutdown() override {
    ForwardingBackend::BeginShutdown();
    std::lock_guard lock(mutex_);
    if (background_ == nullptr || !shutdown_ends_background) return;
    ended_by_shutdown_ = std::thread([done = std::exchange(background_, nullptr)] {
      done(UnavailableError("epd is shutting down"));
    });
  }
  bool PrepareInBackground(BackendHandle& h, CollectiveKind kind,
                           std::function<void(Status)> done) override {
    if (!background_next.exchange(false)) {
      return ForwardingBackend::PrepareInBackground(h, kind, std::move(done));
    }
    Record("background");
    std::lock_guard lock(mutex_);
    background_ = std::move(done);
    return true;
  }
  // As the formation thread does: outside the worker.
  void EndBackground(const Status& outcome) {
    std::function<void(Status)> done;
    {
      std::lock_guard lock(mutex_);
      done = std::exchange(background_, nullptr);
    }
    ASSERT_TRUE(done != nullptr) << "no preparation runs in the background";
    std::thread([done, outcome] { done(outcome); }).join();
  }
  Status PrepareCollective(BackendHandle& h) override {
    Record("prepare");
    if (fail) return UnavailableError("the peers are not there yet");
    return ForwardingBackend::PrepareCollective(h);
  }
  Status WaitFence(BackendHandle& h, ExportedMemory& f, uint64_t v) override {
    Record("wait");
    return ForwardingBackend::WaitFence(h, f, v);
  }
  std::atomic<bool> fail{false};
  std::atomic<bool> background_next{false};
  std::atomic<bool> shutdown_ends_background{true};

 private:
  std::mutex mutex_;
  std::function<void(Status)> background_;
  std::thread ended_by_shutdown_;
};

// A collective is prepared before its stream waits on its fence (the cuda backend forms a
// spanning group's communicator there, which must not wait behind that fence); a failed
// preparation fails the op, naming the group, without a fence wait, and the next ops work.
TEST(EngineCollectiveTest, PreparedBeforeTheFenceWaitAndAFailedPreparationFailsOnlyTheOp) {
  auto owned =
      std::make_unique<PreparingBackend>(CreateCpuBackend({1, milliseconds(2000)}).value());
  PreparingBackend& backend = *owned;
  auto engine = Engine::Create(std::move(owned), EngineOptions{}).value();
  engine_testing::Frontend f(*engine, 0);
  ASSERT_NO_FATAL_FAILURE(JoinOneRankGroup(*engine, f, "prepared"));
  const engine_testing::MappedFence fence = engine_testing::MapNewFence(*engine, f.session);
  std::atomic_ref<uint64_t>(*fence.counter).store(100);  // every wait below is satisfied
  OpOptions waits;
  waits.wait = FenceOp{fence.info.id, 1};
  auto run = [&](bool with_dispatch) {
    engine_testing::Waiter update, dispatch;
    EXPECT_TRUE(engine->SubmitUpdate(f.session, f.Update(1), OpOptions{}, update.Done()).ok());
    EXPECT_TRUE(update.Get().ok());
    if (!with_dispatch) return OkStatus();
    EXPECT_TRUE(engine->SubmitDispatch(f.session, f.Dispatch(1), waits, dispatch.Done()).ok());
    return dispatch.Get();
  };
  EXPECT_TRUE(run(true).ok());
  EXPECT_EQ(backend.TakeCalls(), (std::vector<std::string>{"prepare", "wait"}));

  backend.fail = true;
  const Status failed = run(true);
  EXPECT_EQ(failed.code(), StatusCode::kUnavailable) << failed.ToString();
  EXPECT_NE(failed.message().find("group 'prepared' dispatch"), std::string::npos)
      << failed.ToString();
  EXPECT_NE(failed.message().find("the peers are not there yet"), std::string::npos)
      << failed.ToString();
  EXPECT_EQ(backend.TakeCalls(), std::vector<std::string>{"prepare"});

  backend.fail = false;
  EXPECT_TRUE(run(true).ok());
  engine_testing::Waiter combine;
  ASSERT_TRUE(engine->SubmitCombine(f.session, f.Combine(1), waits, combine.Done()).ok());
  EXPECT_TRUE(combine.Get().ok());
  EXPECT_EQ(backend.TakeCalls(), (std::vector<std::string>{"prepare", "wait", "prepare", "wait"}));
}

// A preparation that runs in the background (a spanning group's communicator formation)
// holds its op and the later ops of the op's group on that rank, not another group's; the op
// runs once it succeeded, and fails with its error, without a fence wait, when it failed.
TEST(EngineCollectiveTest, APreparationInTheBackgroundHoldsItsLaneAndNoOtherGroupOfTheRank) {
  auto owned =
      std::make_unique<PreparingBackend>(CreateCpuBackend({1, milliseconds(2000)}).value());
  PreparingBackend& backend = *owned;
  auto engine = Engine::Create(std::move(owned), EngineOptions{}).value();
  engine_testing::Frontend f(*engine, 0), other(*engine, 0);
  ASSERT_NO_FATAL_FAILURE(JoinAndRoute(*engine, f, "forming"));
  ASSERT_NO_FATAL_FAILURE(JoinAndRoute(*engine, other, "other"));
  const engine_testing::MappedFence fence = engine_testing::MapNewFence(*engine, f.session);
  std::atomic_ref<uint64_t>(*fence.counter).store(100);  // every wait below is satisfied
  OpOptions waits;
  waits.wait = FenceOp{fence.info.id, 1};
  OpOptions blocking;
  blocking.blocking = true;

  backend.background_next = true;
  std::atomic<bool> answered{false};
  engine_testing::Waiter dispatch, update, elsewhere;
  OpDone dispatch_done = [&, done = dispatch.Done()](Status status) {
    answered = true;
    done(std::move(status));
  };
  ASSERT_TRUE(engine->SubmitDispatch(f.session, f.Dispatch(1), waits, dispatch_done).ok());
  std::atomic<bool> update_after_dispatch{false};
  OpDone update_done = [&, done = update.Done()](Status status) {
    update_after_dispatch = answered.load();
    done(std::move(status));
  };
  ASSERT_TRUE(engine->SubmitUpdate(f.session, f.Update(1), OpOptions{}, update_done).ok());
  ASSERT_TRUE(
      engine->SubmitDispatch(other.session, other.Dispatch(1), blocking, elsewhere.Done()).ok());
  EXPECT_TRUE(elsewhere.Get().ok());  // the other group's op ran to its end meanwhile
  EXPECT_FALSE(answered.load());
  EXPECT_EQ(backend.TakeCalls(), (std::vector<std::string>{"background", "prepare"}));
  ASSERT_NO_FATAL_FAILURE(backend.EndBackground(OkStatus()));
  EXPECT_TRUE(dispatch.Get().ok());
  EXPECT_TRUE(update.Get().ok());
  EXPECT_TRUE(update_after_dispatch.load()) << "the update overtook the held dispatch";
  EXPECT_EQ(backend.TakeCalls(), (std::vector<std::string>{"prepare", "wait"}));

  backend.background_next = true;
  engine_testing::Waiter failing;
  ASSERT_TRUE(engine->SubmitDispatch(f.session, f.Dispatch(1), waits, failing.Done()).ok());
  for (int i = 0; i < 10'000 && backend.CallCount() < 1; ++i) {
    std::this_thread::sleep_for(milliseconds(1));
  }
  ASSERT_NO_FATAL_FAILURE(backend.EndBackground(UnavailableError("the peers never came")));
  const Status failed = failing.Get();
  EXPECT_EQ(failed.code(), StatusCode::kUnavailable) << failed.ToString();
  EXPECT_NE(failed.message().find("group 'forming' dispatch"), std::string::npos)
      << failed.ToString();
  EXPECT_NE(failed.message().find("the peers never came"), std::string::npos) << failed.ToString();
  EXPECT_EQ(backend.TakeCalls(), std::vector<std::string>{"background"});
  engine_testing::Waiter next;
  ASSERT_TRUE(engine->SubmitDispatch(f.session, f.Dispatch(1), waits, next.Done()).ok());
  EXPECT_TRUE(next.Get().ok());
}

// An op held by its preparation, and the lane's ops behind it, end with their session (they
// are cancelled when the preparation ends) and with the daemon's shutdown (which ends the
// preparation): nothing stays in flight.
TEST(EngineCollectiveTest, OpsHeldByAPreparationEndWithTheirSessionAndWithTheShutdown) {
  auto owned =
      std::make_unique<PreparingBackend>(CreateCpuBackend({1, milliseconds(2000)}).value());
  PreparingBackend& backend = *owned;
  EngineOptions options;
  options.drain_timeout = milliseconds(200);
  auto engine = Engine::Create(std::move(owned), options).value();
  {
    engine_testing::Frontend f(*engine, 0);
    ASSERT_NO_FATAL_FAILURE(JoinAndRoute(*engine, f, "closing"));
    backend.background_next = true;
    engine_testing::Waiter dispatch, update;
    ASSERT_TRUE(
        engine->SubmitDispatch(f.session, f.Dispatch(1), OpOptions{}, dispatch.Done()).ok());
    ASSERT_TRUE(engine->SubmitUpdate(f.session, f.Update(1), OpOptions{}, update.Done()).ok());
    for (int i = 0; i < 10'000 && backend.CallCount() < 1; ++i) {
      std::this_thread::sleep_for(milliseconds(1));
    }
    ASSERT_TRUE(engine->CloseSession(f.session, "the frontend went away").ok());
    ASSERT_NO_FATAL_FAILURE(backend.EndBackground(OkStatus()));
    EXPECT_EQ(dispatch.Get().code(), StatusCode::kCancelled);
    EXPECT_EQ(update.Get().code(), StatusCode::kCancelled);
    EXPECT_EQ(backend.TakeCalls(), std::vector<std::string>{"background"});
  }

  engine_testing::Frontend f(*engine, 0);
  ASSERT_NO_FATAL_FAILURE(JoinAndRoute(*engine, f, "stopping"));
  backend.background_next = true;
  engine_testing::Waiter dispatch, update;
  ASSERT_TRUE(engine->SubmitDispatch(f.session, f.Dispatch(1), OpOptions{}, dispatch.Done()).ok());
  ASSERT_TRUE(engine->SubmitUpdate(f.session, f.Update(1), OpOptions{}, update.Done()).ok());
  for (int i = 0; i < 10'000 && backend.CallCount() < 1; ++i) {
    std::this_thread::sleep_for(milliseconds(1));
  }
  const auto start = std::chrono::steady_clock::now();
  engine->Shutdown();
  EXPECT_LT(std::chrono::steady_clock::now() - start, milliseconds(1500));
  const Status stopped = dispatch.Get();
  EXPECT_EQ(stopped.code(), StatusCode::kUnavailable) << stopped.ToString();
  EXPECT_NE(stopped.message().find("shutting down"), std::string::npos) << stopped.ToString();
  EXPECT_TRUE(update.Get().ok());  // runs once the lane resumes: routing needs no peer
}

// A preparation that outlives the daemon's workers (it ends only when the backend goes, after
// the workers were joined) still answers its op, and the lane's ops held behind it are
// answered when the workers stop: every op gets its one answer.
TEST(EngineCollectiveTest, OpsHeldPastTheWorkersAreAnsweredWhenTheDaemonStops) {
  auto owned =
      std::make_unique<PreparingBackend>(CreateCpuBackend({1, milliseconds(2000)}).value());
  PreparingBackend& backend = *owned;
  backend.shutdown_ends_background = false;
  EngineOptions options;
  options.drain_timeout = milliseconds(100);
  auto engine = Engine::Create(std::move(owned), options).value();
  engine_testing::Waiter dispatch, update;
  {
    engine_testing::Frontend f(*engine, 0);
    ASSERT_NO_FATAL_FAILURE(JoinAndRoute(*engine, f, "outlived"));
    backend.background_next = true;
    ASSERT_TRUE(
        engine->SubmitDispatch(f.session, f.Dispatch(1), OpOptions{}, dispatch.Done()).ok());
    ASSERT_TRUE(engine->SubmitUpdate(f.session, f.Update(1), OpOptions{}, update.Done()).ok());
    for (int i = 0; i < 10'000 && backend.CallCount() < 1; ++i) {
      std::this_thread::sleep_for(milliseconds(1));
    }
    engine->Shutdown();
  }
  engine.reset();
  for (engine_testing::Waiter* waiter : {&dispatch, &update}) {
    const Status answer = waiter->Get();
    EXPECT_EQ(answer.code(), StatusCode::kUnavailable) << answer.ToString();
    EXPECT_NE(answer.message().find("epd stopped before the op ran"), std::string::npos)
        << answer.ToString();
  }
}

// Records the order of Dispatch, Combine and the deferred part. The dispatch after
// `defer_next` leaves a deferred part, and its lane's first completion waits for `release`
// (as the cuda backend's lane waits for the op's fence and counts); the part fails while `fail`.
class DeferringBackend : public testing::ForwardingBackend, public CallLog {
 public:
  using ForwardingBackend::ForwardingBackend;
  ~DeferringBackend() override {
    for (std::thread& t : held_) t.join();
  }
  Status Dispatch(BackendHandle& h, const DispatchArgs& a) override {
    Record("dispatch");
    if (defer_next.exchange(false)) deferring_ = &h;
    return ForwardingBackend::Dispatch(h, a);
  }
  Status Combine(BackendHandle& h, const CombineArgs& a) override {
    Record("combine");
    return ForwardingBackend::Combine(h, a);
  }
  bool HasDeferred(BackendHandle& h) override { return &h == deferring_; }
  void Complete(BackendHandle& h, std::function<void(Status)> done) override {
    if (&h != deferring_ || std::exchange(completion_held_, true)) {
      ForwardingBackend::Complete(h, std::move(done));
      return;
    }
    held_.emplace_back([this, &h, done = std::move(done)]() mutable {
      if (release.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
        Record("lane never done");
      }
      ForwardingBackend::Complete(h, std::move(done));
    });
  }
  Status EnqueueDeferred(BackendHandle& h) override {
    if (&h != deferring_) return ForwardingBackend::EnqueueDeferred(h);
    Record("deferred");
    deferring_ = nullptr;
    completion_held_ = false;
    if (fail) return UnavailableError("the counts never came");
    return ForwardingBackend::EnqueueDeferred(h);
  }
  std::atomic<bool> defer_next{false};
  std::shared_future<void> release;
  std::atomic<bool> fail{false};

 private:
  // The rank worker only.
  const BackendHandle* deferring_ = nullptr;
  bool completion_held_ = false;
  std::vector<std::thread> held_;
};

// The deferred part of an op runs after the op was answered (a frontend may signal the op's
// fence only then) and once its lane is done, before the lane's next op reaches the backend;
// another group's ops of the same rank go on meanwhile. When the part fails, the op fails as a
// device error does: a blocking op's answer carries it.
TEST(EngineCollectiveTest, TheDeferredPartHoldsItsLaneAndNoOtherGroupOfTheRank) {
  auto owned =
      std::make_unique<DeferringBackend>(CreateCpuBackend({1, milliseconds(2000)}).value());
  DeferringBackend& backend = *owned;
  auto engine = Engine::Create(std::move(owned), EngineOptions{}).value();
  engine_testing::Frontend f(*engine, 0), other(*engine, 0);
  ASSERT_NO_FATAL_FAILURE(JoinAndRoute(*engine, f, "deferred"));
  ASSERT_NO_FATAL_FAILURE(JoinAndRoute(*engine, other, "other"));
  OpOptions blocking;
  blocking.blocking = true;

  std::promise<void> release;
  backend.release = release.get_future().share();
  backend.defer_next = true;
  engine_testing::Waiter dispatch, combine, elsewhere;
  ASSERT_TRUE(engine->SubmitDispatch(f.session, f.Dispatch(1), OpOptions{}, dispatch.Done()).ok());
  EXPECT_TRUE(dispatch.Get().ok());  // answered while the deferred part still waits
  ASSERT_TRUE(engine->SubmitCombine(f.session, f.Combine(1), OpOptions{}, combine.Done()).ok());
  ASSERT_TRUE(
      engine->SubmitDispatch(other.session, other.Dispatch(1), blocking, elsewhere.Done()).ok());
  EXPECT_TRUE(elsewhere.Get().ok());  // the other group's op ran to its end meanwhile
  EXPECT_EQ(backend.TakeCalls(), (std::vector<std::string>{"dispatch", "dispatch"}));
  release.set_value();
  EXPECT_TRUE(combine.Get().ok());
  EXPECT_EQ(backend.TakeCalls(), (std::vector<std::string>{"deferred", "combine"}));

  std::promise<void> released;
  released.set_value();
  backend.release = released.get_future().share();
  backend.fail = true;
  backend.defer_next = true;
  engine_testing::Waiter failing;
  ASSERT_TRUE(engine->SubmitDispatch(f.session, f.Dispatch(1), blocking, failing.Done()).ok());
  const Status failed = failing.Get();
  EXPECT_EQ(failed.code(), StatusCode::kUnavailable) << failed.ToString();
  EXPECT_NE(failed.message().find("the counts never came"), std::string::npos) << failed.ToString();
  EXPECT_EQ(backend.TakeCalls(), (std::vector<std::string>{"dispatch", "deferred"}));
}

}  // namespace
}  // namespace epd
