// The engine over the cpu backend, in one process: sessions, scoping, validation, collective
// ops across rank threads, persistence, allocation counting and cleanup.
#include "daemon/core/engine.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <future>
#include <thread>

#include "daemon/backends/cpu/cpu_backend.h"
#include "daemon/backends/cpu/shm_region.h"
#include "common/fence_page.h"

namespace epd {
namespace {

using std::chrono::milliseconds;

constexpr int kRanks = 2;
constexpr int kHidden = 16;
constexpr int kTokens = 8;
constexpr int kTopK = 2;
constexpr int kExperts = 4;

GroupConfig Config(std::string name = "g") {
  GroupConfig c;
  c.name = std::move(name);
  c.ranks = {0, 1};
  c.experts = kExperts;
  c.hidden = kHidden;
  c.max_tokens_per_rank = kTokens;
  c.top_k = kTopK;
  c.dtype = DType::kFp32;
  return c;
}

std::string UniqueShmName() {
  static std::atomic<int> next{0};
  return "/epd-test-" + std::to_string(getpid()) + "-" + std::to_string(next++);
}

// Blocks on an op's completion callback.
struct Waiter {
  std::promise<Status> promise;
  OpDone Done() {
    return [this](Status status) { promise.set_value(std::move(status)); };
  }
  Status Get() {
    auto future = promise.get_future();
    if (future.wait_for(std::chrono::seconds(20)) != std::future_status::ready) {
      return DeadlineExceededError("test: op never completed");
    }
    return future.get();
  }
};

// One frontend: a session with x / topk / weights / out tensors in its own shm object.
struct Frontend {
  Frontend(Engine& engine, int rank) : engine(engine), rank(rank) {
    session = engine.OpenSession(rank, "test", /*unary=*/false).value().id;
    shm = ShmRegion::Create(UniqueShmName(), kBytes).value();
    MemorySource source;
    source.shm_name = shm->name();
    source.size = kBytes;
    buffer = engine.RegisterBuffer(session, source).value().id;
  }
  ~Frontend() { engine.CloseSession(session, "test done").IgnoreError(); }

  float* x() { return reinterpret_cast<float*>(static_cast<char*>(shm->data()) + kXOffset); }
  int32_t* topk() {
    return reinterpret_cast<int32_t*>(static_cast<char*>(shm->data()) + kTopkOffset);
  }
  float* weights() {
    return reinterpret_cast<float*>(static_cast<char*>(shm->data()) + kWeightsOffset);
  }
  float* out() { return reinterpret_cast<float*>(static_cast<char*>(shm->data()) + kOutOffset); }

  TensorRef Ref(uint64_t offset, DType dtype, std::vector<int64_t> shape) const {
    return TensorRef{buffer, offset, dtype, std::move(shape)};
  }
  UpdateRequest Update(int n) const {
    UpdateRequest request;
    request.handle_id = handle;
    request.topk_idx = Ref(kTopkOffset, DType::kInt32, {n, kTopK});
    request.topk_weights = Ref(kWeightsOffset, DType::kFp32, {n, kTopK});
    return request;
  }
  DispatchRequest Dispatch(int n) const {
    DispatchRequest request;
    request.handle_id = handle;
    request.x = Ref(kXOffset, DType::kFp32, {n, kHidden});
    return request;
  }
  CombineRequest Combine(int n) const {
    CombineRequest request;
    request.handle_id = handle;
    request.out = Ref(kOutOffset, DType::kFp32, {n, kHidden});
    return request;
  }

  static constexpr uint64_t kXOffset = 0;
  static constexpr uint64_t kTopkOffset = 4096;
  static constexpr uint64_t kWeightsOffset = 8192;
  static constexpr uint64_t kOutOffset = 12288;
  static constexpr uint64_t kBytes = 16384;

  Engine& engine;
  int rank;
  SessionId session = 0;
  ObjectId buffer = 0;
  ObjectId handle = 0;
  std::unique_ptr<ShmRegion> shm;
};

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto backend = CreateCpuBackend({kRanks, milliseconds(2000)});
    ASSERT_TRUE(backend.ok());
    EngineOptions options;
    options.unary_session_idle_timeout = milliseconds(300);
    options.drain_timeout = milliseconds(200);
    engine_ = Engine::Create(std::move(backend).value(), options).value();
    ASSERT_TRUE(engine_->CreateGroup(std::nullopt, Config(), /*persistent=*/true).ok());
    for (int r = 0; r < kRanks; ++r) {
      frontends_.push_back(std::make_unique<Frontend>(*engine_, r));
      auto handle = engine_->CreateHandle(frontends_[r]->session, "g", r, "", false);
      ASSERT_TRUE(handle.ok()) << handle.status().ToString();
      frontends_[r]->handle = handle->id;
    }
  }
  void TearDown() override {
    frontends_.clear();
    engine_.reset();
  }

  // Fills x with distinct values and a routing that uses every expert.
  void FillInputs(int n) {
    for (int r = 0; r < kRanks; ++r) {
      Frontend& f = *frontends_[r];
      for (int t = 0; t < n; ++t) {
        for (int h = 0; h < kHidden; ++h) f.x()[t * kHidden + h] = r * 1000 + t * 10 + h * 0.5f;
        f.topk()[t * kTopK + 0] = (t + r) % kExperts;
        f.topk()[t * kTopK + 1] = t % 3 == 0 ? -1 : (t + r + 1) % kExperts;
        f.weights()[t * kTopK + 0] = 0.5f;
        f.weights()[t * kTopK + 1] = 0.25f;
      }
    }
  }

  // Runs update -> dispatch -> (identity) -> combine on every rank, blocking.
  void RunLayer(int n) {
    OpOptions blocking;
    blocking.blocking = true;
    std::vector<std::unique_ptr<Waiter>> waiters;
    for (int r = 0; r < kRanks; ++r) {
      auto& w = waiters.emplace_back(std::make_unique<Waiter>());
      ASSERT_TRUE(
          engine_
              ->SubmitUpdate(frontends_[r]->session, frontends_[r]->Update(n), blocking, w->Done())
              .ok());
      ASSERT_TRUE(w->Get().ok());
    }
    waiters.clear();
    for (int r = 0; r < kRanks; ++r) {
      auto& w = waiters.emplace_back(std::make_unique<Waiter>());
      ASSERT_TRUE(engine_
                      ->SubmitDispatch(frontends_[r]->session, frontends_[r]->Dispatch(n), blocking,
                                       w->Done())
                      .ok());
    }
    for (auto& w : waiters) ASSERT_TRUE(w->Get().ok());
    waiters.clear();
    for (int r = 0; r < kRanks; ++r) {
      auto& w = waiters.emplace_back(std::make_unique<Waiter>());
      ASSERT_TRUE(engine_
                      ->SubmitCombine(frontends_[r]->session, frontends_[r]->Combine(n), blocking,
                                      w->Done())
                      .ok());
    }
    for (auto& w : waiters) ASSERT_TRUE(w->Get().ok());
  }

  void ExpectWeightedSums(int n) {
    for (int r = 0; r < kRanks; ++r) {
      Frontend& f = *frontends_[r];
      for (int t = 0; t < n; ++t) {
        const float sum = t % 3 == 0 ? 0.5f : 0.75f;
        for (int h = 0; h < kHidden; ++h) {
          const float x = f.x()[t * kHidden + h];
          const float expected = t % 3 == 0 ? 0.5f * x : 0.5f * x + 0.25f * x;
          ASSERT_EQ(f.out()[t * kHidden + h], expected)
              << "rank " << r << " t " << t << " sum " << sum;
        }
      }
    }
  }

  std::unique_ptr<Engine> engine_;
  std::vector<std::unique_ptr<Frontend>> frontends_;
};

TEST_F(EngineTest, DispatchIdentityCombineReturnsWeightedTokens) {
  FillInputs(kTokens);
  RunLayer(kTokens);
  ExpectWeightedSums(kTokens);
  FillInputs(3);
  RunLayer(3);
  ExpectWeightedSums(3);
  EngineStats stats = engine_->Stats();
  EXPECT_EQ(stats.dispatch.completed, 4u);
  EXPECT_EQ(stats.combine.completed, 4u);
  EXPECT_EQ(stats.sessions_open, 2u);
}

TEST_F(EngineTest, UpdatesDispatchesAndCombinesNeverAllocate) {
  FillInputs(kTokens);
  const uint64_t allocations = engine_->Stats().allocations;
  const uint64_t frees = engine_->Stats().frees;
  OpOptions blocking;
  blocking.blocking = true;
  for (int i = 0; i < 1000; ++i) {
    Waiter w;
    ASSERT_TRUE(engine_
                    ->SubmitUpdate(frontends_[0]->session, frontends_[0]->Update(i % (kTokens + 1)),
                                   blocking, w.Done())
                    .ok());
    ASSERT_TRUE(w.Get().ok());
  }
  RunLayer(kTokens);
  EXPECT_EQ(engine_->Stats().allocations, allocations);
  EXPECT_EQ(engine_->Stats().frees, frees);
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

TEST_F(EngineTest, RejectsBadRequestsNamingTheField) {
  Frontend& f = *frontends_[0];
  auto submit_update = [&](UpdateRequest r) {
    return engine_->SubmitUpdate(f.session, r, {}, [](Status) {});
  };
  UpdateRequest too_many = f.Update(kTokens);
  too_many.topk_idx.shape = {kTokens + 1, kTopK};
  too_many.topk_weights.reset();
  Status status = submit_update(too_many);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("exceeds max_tokens_per_rank = 8"), std::string::npos);
  UpdateRequest bad_dtype = f.Update(2);
  bad_dtype.topk_idx.dtype = DType::kFp32;
  EXPECT_NE(submit_update(bad_dtype).message().find("topk_idx.dtype = fp32"), std::string::npos);
  UpdateRequest wrong_k = f.Update(2);
  wrong_k.topk_idx.shape = {2, 3};
  EXPECT_NE(submit_update(wrong_k).message().find("topk_idx.shape[1] = 3"), std::string::npos);

  // Dispatch before any update is a precondition error.
  status = engine_->SubmitDispatch(f.session, f.Dispatch(2), {}, [](Status) {});
  EXPECT_EQ(status.code(), StatusCode::kFailedPrecondition);

  Waiter w;
  OpOptions blocking;
  blocking.blocking = true;
  ASSERT_TRUE(engine_->SubmitUpdate(f.session, f.Update(2), blocking, w.Done()).ok());
  ASSERT_TRUE(w.Get().ok());
  DispatchRequest hidden = f.Dispatch(2);
  hidden.x.shape = {2, kHidden * 2};
  status = engine_->SubmitDispatch(f.session, hidden, {}, [](Status) {});
  EXPECT_EQ(status.message(), "x.shape[1] = 32 does not match hidden = 16");
  DispatchRequest tokens = f.Dispatch(3);
  status = engine_->SubmitDispatch(f.session, tokens, {}, [](Status) {});
  EXPECT_NE(status.message().find("x.shape[0] = 3"), std::string::npos);
  DispatchRequest dtype = f.Dispatch(2);
  dtype.x.dtype = DType::kBf16;
  EXPECT_EQ(engine_->SubmitDispatch(f.session, dtype, {}, [](Status) {}).message(),
            "x.dtype = bf16 does not match the expected fp32");
  DispatchRequest outside = f.Dispatch(2);
  outside.x.offset_bytes = Frontend::kBytes - 16;
  status = engine_->SubmitDispatch(f.session, outside, {}, [](Status) {});
  EXPECT_NE(status.message().find("lies outside the buffer"), std::string::npos);
  DispatchRequest other_rank = f.Dispatch(2);
  other_rank.rank = 1;
  status = engine_->SubmitDispatch(f.session, other_rank, {}, [](Status) {});
  EXPECT_EQ(status.code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(status.message(), "rank = 1 does not match the session's rank 0");
}

TEST_F(EngineTest, BadExpertIdFailsTheUpdateAndTheNextDispatchOfEveryRank) {
  FillInputs(4);
  frontends_[1]->topk()[3] = kExperts;  // token 1, k 1
  OpOptions blocking;
  blocking.blocking = true;
  Waiter ok, bad;
  ASSERT_TRUE(
      engine_->SubmitUpdate(frontends_[0]->session, frontends_[0]->Update(4), blocking, ok.Done())
          .ok());
  ASSERT_TRUE(
      engine_->SubmitUpdate(frontends_[1]->session, frontends_[1]->Update(4), blocking, bad.Done())
          .ok());
  EXPECT_TRUE(ok.Get().ok());
  Status status = bad.Get();
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "topk_idx[1, 1] = 4 is outside [-1, 4)");
  Waiter d0, d1;
  ASSERT_TRUE(
      engine_
          ->SubmitDispatch(frontends_[0]->session, frontends_[0]->Dispatch(4), blocking, d0.Done())
          .ok());
  ASSERT_TRUE(
      engine_
          ->SubmitDispatch(frontends_[1]->session, frontends_[1]->Dispatch(4), blocking, d1.Done())
          .ok());
  for (Waiter* w : {&d0, &d1}) {
    Status s = w->Get();
    EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
    EXPECT_NE(s.message().find("group rank 1: the last UpdateHandle failed"), std::string::npos)
        << s.message();
  }
  // Fixing the routing makes the group work again.
  FillInputs(4);
  RunLayer(4);
  ExpectWeightedSums(4);
}

TEST_F(EngineTest, FencesOrderOpsWithoutBlockingCalls) {
  FillInputs(4);
  Frontend& f = *frontends_[0];
  FenceInfo fence = engine_->CreateFence(f.session).value();
  EXPECT_EQ(fence.counter_offset, kFenceCounterOffset);
  auto page = ShmRegion::Open(fence.source.shm_name, "fence").value();
  const auto* header = static_cast<const FencePageHeader*>(page->data());
  EXPECT_EQ(header->magic, kFenceMagic);
  EXPECT_EQ(header->version, kFenceVersion);
  auto* counter =
      reinterpret_cast<uint64_t*>(static_cast<char*>(page->data()) + fence.counter_offset);

  OpOptions fenced;
  fenced.wait = FenceOp{fence.id, 1};
  fenced.signal = FenceOp{fence.id, 2};
  Waiter posted;
  ASSERT_TRUE(engine_->SubmitUpdate(f.session, f.Update(4), fenced, posted.Done()).ok());
  std::this_thread::sleep_for(milliseconds(50));
  EXPECT_EQ(std::atomic_ref<uint64_t>(*counter).load(), 0u) << "ran before its wait fence";
  std::atomic_ref<uint64_t>(*counter).store(1, std::memory_order_release);
  EXPECT_TRUE(posted.Get().ok());
  for (int i = 0; i < 2000 && std::atomic_ref<uint64_t>(*counter).load() != 2; ++i) {
    std::this_thread::sleep_for(milliseconds(1));
  }
  EXPECT_EQ(std::atomic_ref<uint64_t>(*counter).load(), 2u);
}

TEST_F(EngineTest, FenceWaitTimesOutAndTheRankKeepsWorking) {
  Frontend& f = *frontends_[0];
  FenceInfo fence = engine_->CreateFence(f.session).value();
  OpOptions fenced;
  fenced.wait = FenceOp{fence.id, 7};
  fenced.blocking = true;
  Waiter w;
  ASSERT_TRUE(engine_->SubmitUpdate(f.session, f.Update(1), fenced, w.Done()).ok());
  Status status = w.Get();
  EXPECT_EQ(status.code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(status.message().find("fence wait for value 7"), std::string::npos);
  FillInputs(2);
  RunLayer(2);
  ExpectWeightedSums(2);
}

TEST_F(EngineTest, ClosingASessionFailsPeersWaitingInACollective) {
  FillInputs(2);
  RunLayer(2);
  OpOptions blocking;
  blocking.blocking = true;
  Waiter w;
  const auto start = Clock::now();
  ASSERT_TRUE(
      engine_
          ->SubmitDispatch(frontends_[0]->session, frontends_[0]->Dispatch(2), blocking, w.Done())
          .ok());
  std::this_thread::sleep_for(milliseconds(50));
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
  auto handle = engine_->CreateHandle(extra.session, "g", 0, "", false);
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

TEST_F(EngineTest, CombineNeedsASuccessfulDispatchSinceTheLastUpdate) {
  FillInputs(4);
  RunLayer(4);
  OpOptions blocking;
  blocking.blocking = true;
  // A new routing without a dispatch: combining would mix new routing with old slots.
  for (int r = 0; r < kRanks; ++r) {
    Waiter w;
    ASSERT_TRUE(
        engine_->SubmitUpdate(frontends_[r]->session, frontends_[r]->Update(4), blocking, w.Done())
            .ok());
    ASSERT_TRUE(w.Get().ok());
  }
  std::vector<std::unique_ptr<Waiter>> waiters;
  for (int r = 0; r < kRanks; ++r) {
    auto& w = waiters.emplace_back(std::make_unique<Waiter>());
    ASSERT_TRUE(
        engine_
            ->SubmitCombine(frontends_[r]->session, frontends_[r]->Combine(4), blocking, w->Done())
            .ok());
  }
  for (auto& w : waiters) {
    Status status = w->Get();
    EXPECT_EQ(status.code(), StatusCode::kFailedPrecondition);
    EXPECT_NE(status.message().find("no Dispatch ran on this handle since its last UpdateHandle"),
              std::string::npos)
        << status.message();
  }
}

TEST_F(EngineTest, CapacityOverflowFailsTheDispatchAndTheCombineAfterIt) {
  GroupConfig tight = Config("tight");
  tight.expert_capacity = 1;
  ASSERT_TRUE(engine_->CreateGroup(std::nullopt, tight, true).ok());
  for (int r = 0; r < kRanks; ++r) {
    frontends_[r]->handle =
        engine_->CreateHandle(frontends_[r]->session, "tight", r, "", false)->id;
  }
  FillInputs(4);  // every expert gets several rows
  OpOptions blocking;
  blocking.blocking = true;
  for (int r = 0; r < kRanks; ++r) {
    Waiter w;
    ASSERT_TRUE(
        engine_->SubmitUpdate(frontends_[r]->session, frontends_[r]->Update(4), blocking, w.Done())
            .ok());
    ASSERT_TRUE(w.Get().ok());
  }
  for (bool combine : {false, true}) {
    std::vector<std::unique_ptr<Waiter>> waiters;
    for (int r = 0; r < kRanks; ++r) {
      auto& w = waiters.emplace_back(std::make_unique<Waiter>());
      Status posted =
          combine ? engine_->SubmitCombine(frontends_[r]->session, frontends_[r]->Combine(4),
                                           blocking, w->Done())
                  : engine_->SubmitDispatch(frontends_[r]->session, frontends_[r]->Dispatch(4),
                                            blocking, w->Done());
      ASSERT_TRUE(posted.ok());
    }
    for (auto& w : waiters) {
      Status status = w->Get();
      EXPECT_EQ(status.code(),
                combine ? StatusCode::kFailedPrecondition : StatusCode::kResourceExhausted)
          << status.ToString();
      EXPECT_NE(status.message().find("more than expert_capacity=1"), std::string::npos)
          << status.message();
    }
  }
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

// The cpu backend with a slow CreateGroup (as building an NCCL communicator is), counting calls.
class SlowGroupBackend : public Backend {
 public:
  explicit SlowGroupBackend(std::unique_ptr<Backend> inner) : inner_(std::move(inner)) {}
  int group_builds() const { return group_builds_; }

  NodeDescription Describe() const override { return inner_->Describe(); }
  int num_ranks() const override { return inner_->num_ranks(); }
  AllocationCounter& allocations() override { return inner_->allocations(); }
  std::chrono::milliseconds op_timeout() const override { return inner_->op_timeout(); }
  StatusOr<std::shared_ptr<Memory>> Import(const MemorySource& s, int r) override {
    return inner_->Import(s, r);
  }
  StatusOr<std::unique_ptr<ExportedMemory>> CreateFence(int r) override {
    return inner_->CreateFence(r);
  }
  StatusOr<std::unique_ptr<BackendGroup>> CreateGroup(const GroupConfig& c) override {
    ++group_builds_;
    std::this_thread::sleep_for(milliseconds(200));
    return inner_->CreateGroup(c);
  }
  StatusOr<std::unique_ptr<BackendHandle>> CreateHandle(BackendGroup& g, int r) override {
    return inner_->CreateHandle(g, r);
  }
  Status WaitFence(int r, ExportedMemory& f, uint64_t v) override {
    return inner_->WaitFence(r, f, v);
  }
  Status SignalFence(int r, ExportedMemory& f, uint64_t v) override {
    return inner_->SignalFence(r, f, v);
  }
  Status UpdateHandle(BackendHandle& h, const UpdateArgs& a) override {
    return inner_->UpdateHandle(h, a);
  }
  Status Dispatch(BackendGroup& g, int r, const std::vector<DispatchArgs>& a) override {
    return inner_->Dispatch(g, r, a);
  }
  Status Combine(BackendGroup& g, int r, const std::vector<CombineArgs>& a) override {
    return inner_->Combine(g, r, a);
  }
  void Complete(BackendHandle& h, std::function<void(Status)> done) override {
    inner_->Complete(h, std::move(done));
  }

 private:
  std::unique_ptr<Backend> inner_;
  std::atomic<int> group_builds_{0};
};

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
  auto session = engine_->OpenSession(0, "grpcurl", /*unary=*/true);
  ASSERT_TRUE(session.ok());
  EXPECT_TRUE(engine_->Touch(session->id).ok());
  std::this_thread::sleep_for(milliseconds(1200));
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
  std::this_thread::sleep_for(milliseconds(50));
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
}  // namespace epd
