// The engine's data plane over the cpu backend: ops across rank threads, validation on the
// enqueue path, fences, the handle's op outcome state machine, op records and stats.
#include <atomic>
#include <thread>

#include "common/fence_page.h"
#include "tests/unit/engine_fixture.h"

namespace epd::engine_testing {
namespace {

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

TEST_F(EngineTest, EveryFinishedOpIsReportedOnceAndCountedOnItsSession) {
  FillInputs(3);
  RunLayer(3);
  // A refused submission is no op: neither reported nor counted.
  UpdateRequest bad = frontends_[0]->Update(3);
  bad.topk_idx.dtype = DType::kFp32;
  EXPECT_FALSE(engine_->SubmitUpdate(frontends_[0]->session, bad, {}, [](Status) {}).ok());
  // One that fails while running is both.
  OpOptions blocking;
  blocking.blocking = true;
  frontends_[1]->topk()[0] = kExperts;
  Waiter failed;
  ASSERT_TRUE(engine_
                  ->SubmitUpdate(frontends_[1]->session, frontends_[1]->Update(3), blocking,
                                 failed.Done())
                  .ok());
  EXPECT_EQ(failed.Get().code(), StatusCode::kInvalidArgument);

  const std::vector<Record> records = Records();
  ASSERT_EQ(records.size(), 7u);
  const uint64_t token_bytes = 3 * kHidden * sizeof(float);
  int per_kind[3] = {0, 0, 0};
  for (const Record& r : records) {
    EXPECT_EQ(r.group, "g");
    if (r.kind == "update") {
      ++per_kind[0];
      EXPECT_EQ(r.payload_bytes, 0u);
    } else {
      ++per_kind[r.kind == "dispatch" ? 1 : 2];
      EXPECT_TRUE(r.kind == "dispatch" || r.kind == "combine") << r.kind;
      EXPECT_EQ(r.payload_bytes, token_bytes) << r.kind;
      EXPECT_EQ(r.code, StatusCode::kOk);
    }
  }
  EXPECT_EQ(per_kind[0], 3);
  EXPECT_EQ(per_kind[1], 2);
  EXPECT_EQ(per_kind[2], 2);
  EXPECT_EQ(records.back().kind, "update");
  EXPECT_EQ(records.back().rank, 1);
  EXPECT_EQ(records.back().code, StatusCode::kInvalidArgument);

  const std::vector<SessionSummary> sessions = engine_->ListSessions();
  ASSERT_EQ(sessions.size(), 2u);
  for (const SessionSummary& s : sessions) {
    EXPECT_EQ(s.client_name, "test");
    EXPECT_FALSE(s.unary);
    EXPECT_EQ(s.peer.pid, -1) << "no peer was given";
    EXPECT_LE(s.opened, Clock::now());
    EXPECT_EQ(s.ops_completed, 3u) << "rank " << s.rank;
    EXPECT_EQ(s.ops_failed, s.rank == 1 ? 1u : 0u) << "rank " << s.rank;
  }
  EngineStats stats = engine_->Stats();
  EXPECT_EQ(stats.update.completed, 2u);
  EXPECT_EQ(stats.update.failed, 1u);
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

class HighThroughputEngineTest : public EngineTest {
 protected:
  HighThroughputEngineTest() { algorithm_ = Algorithm::kHighThroughput; }
};

TEST_F(HighThroughputEngineTest, UpdatesDispatchesAndCombinesNeverAllocate) {
  FillInputs(kTokens);
  const uint64_t allocations = engine_->Stats().allocations;
  const uint64_t frees = engine_->Stats().frees;
  for (int n : {kTokens, 0, 1, kTokens - 1, kTokens}) {
    RunLayer(n);
    // Identity experts in place, each destination rank once with weight 1: x times the
    // number of ranks the token's experts live on.
    for (int r = 0; r < kRanks; ++r) {
      Frontend& f = *frontends_[r];
      for (int t = 0; t < n; ++t) {
        const int e0 = f.topk()[t * kTopK], e1 = f.topk()[t * kTopK + 1];
        const int L = kExperts / kRanks;
        const float copies = e1 < 0 || e1 / L == e0 / L ? 1.0f : 2.0f;
        ASSERT_EQ(f.out()[t * kHidden + 3], copies * f.x()[t * kHidden + 3])
            << "rank " << r << " t " << t;
      }
    }
  }
  EXPECT_EQ(engine_->Stats().allocations, allocations);
  EXPECT_EQ(engine_->Stats().frees, frees);
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
  const MappedFence mapped = MapNewFence(*engine_, f.session);
  const FenceInfo& fence = mapped.info;
  EXPECT_EQ(fence.counter_offset, kFenceCounterOffset);
  const auto* header = static_cast<const FencePageHeader*>(mapped.page->data());
  EXPECT_EQ(header->magic, kFenceMagic);
  EXPECT_EQ(header->version, kFenceVersion);
  uint64_t* counter = mapped.counter;

  OpOptions fenced;
  fenced.wait = FenceOp{fence.id, 1};
  fenced.signal = FenceOp{fence.id, 2};
  Waiter posted;
  ASSERT_TRUE(engine_->SubmitUpdate(f.session, f.Update(4), fenced, posted.Done()).ok());
  ASSERT_EQ(WaitForOpsRunning(*engine_, f.session, 1), 1u) << "the op reached its stream";
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

// The per-rank collective path: a rank's op is enqueued as soon as it posts it; the ranks meet
// on the backend's streams, never in the engine's workers.
TEST_F(EngineTest, ALateRankDelaysOnlyTheStreamAndTheLayerStaysExact) {
  FillInputs(4);
  OpOptions blocking;
  blocking.blocking = true;
  for (int r = 0; r < kRanks; ++r) {
    Waiter w;
    ASSERT_TRUE(
        engine_->SubmitUpdate(frontends_[r]->session, frontends_[r]->Update(4), blocking, w.Done())
            .ok());
    ASSERT_TRUE(w.Get().ok());
  }
  Frontend& early = *frontends_[0];
  Frontend& late = *frontends_[1];
  const auto start = Clock::now();
  Waiter early_dispatch, early_combine;
  ASSERT_TRUE(
      engine_->SubmitDispatch(early.session, early.Dispatch(4), {}, early_dispatch.Done()).ok());
  ASSERT_TRUE(
      engine_->SubmitCombine(early.session, early.Combine(4), blocking, early_combine.Done()).ok());
  // Non-blocking: answered once enqueued, before the late rank posts (were it waiting for its
  // peer, this would wait until the op timeout and fail).
  EXPECT_TRUE(early_dispatch.Get().ok());
  EXPECT_LT(Clock::now() - start, milliseconds(1000)) << "the early rank waited for its peer";
  // Both early ops wait on the early rank's stream for the late frontend.
  ASSERT_EQ(WaitForOpsRunning(*engine_, early.session, 2), 2u);
  Waiter late_dispatch, late_combine;
  ASSERT_TRUE(
      engine_->SubmitDispatch(late.session, late.Dispatch(4), blocking, late_dispatch.Done()).ok());
  ASSERT_TRUE(
      engine_->SubmitCombine(late.session, late.Combine(4), blocking, late_combine.Done()).ok());
  EXPECT_TRUE(late_dispatch.Get().ok());
  EXPECT_TRUE(late_combine.Get().ok());
  EXPECT_TRUE(early_combine.Get().ok());
  ExpectWeightedSums(4);
}

TEST_F(EngineTest, ARankThatNeverPostsFailsItsPeersNamingItAndTheGroupRecovers) {
  FillInputs(2);
  RunLayer(2);
  OpOptions blocking;
  blocking.blocking = true;
  Waiter lonely;
  const auto start = Clock::now();
  ASSERT_TRUE(engine_
                  ->SubmitDispatch(frontends_[0]->session, frontends_[0]->Dispatch(2), blocking,
                                   lonely.Done())
                  .ok());
  Status status = lonely.Get();
  EXPECT_GE(Clock::now() - start, milliseconds(1900)) << "op_timeout is 2000 ms";
  EXPECT_EQ(status.code(), StatusCode::kDeadlineExceeded) << status.ToString();
  EXPECT_NE(status.message().find("group ranks [1] did not post it"), std::string::npos)
      << status.message();
  // The late op of rank 1 takes the failed op's number and fails at once; then every rank's
  // next op is the same op again.
  Waiter too_late;
  const auto late_start = Clock::now();
  ASSERT_TRUE(engine_
                  ->SubmitDispatch(frontends_[1]->session, frontends_[1]->Dispatch(2), blocking,
                                   too_late.Done())
                  .ok());
  EXPECT_EQ(too_late.Get().code(), StatusCode::kDeadlineExceeded);
  EXPECT_LT(Clock::now() - late_start, milliseconds(500));
  FillInputs(3);
  RunLayer(3);
  ExpectWeightedSums(3);
}

TEST_F(EngineTest, ARankWhoseRoutingFailedReleasesItsWaitingPeerAtOnce) {
  FillInputs(2);
  RunLayer(2);
  OpOptions blocking;
  blocking.blocking = true;
  Waiter waiting, bad_update, abandoned;
  const auto start = Clock::now();
  ASSERT_TRUE(engine_
                  ->SubmitDispatch(frontends_[0]->session, frontends_[0]->Dispatch(2), blocking,
                                   waiting.Done())
                  .ok());
  frontends_[1]->topk()[0] = -7;
  ASSERT_TRUE(engine_
                  ->SubmitUpdate(frontends_[1]->session, frontends_[1]->Update(2), blocking,
                                 bad_update.Done())
                  .ok());
  EXPECT_EQ(bad_update.Get().code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(engine_
                  ->SubmitDispatch(frontends_[1]->session, frontends_[1]->Dispatch(2), blocking,
                                   abandoned.Done())
                  .ok());
  EXPECT_EQ(abandoned.Get().code(), StatusCode::kFailedPrecondition);
  Status status = waiting.Get();
  EXPECT_LT(Clock::now() - start, milliseconds(1000)) << "waited for the op timeout";
  EXPECT_EQ(status.code(), StatusCode::kFailedPrecondition) << status.ToString();
  EXPECT_NE(status.message().find("group rank 1: the last UpdateHandle failed"), std::string::npos)
      << status.message();
  FillInputs(2);
  RunLayer(2);
  ExpectWeightedSums(2);
}

// A rank whose last dispatch failed refuses its combine and its peer's dispatch fails with that
// reason; when the ranks then keep swapping roles, each failure names the one before. The
// reasons must not nest without end: a frontend looping on such errors for hours would
// otherwise get (and the daemon keep) megabytes per answer.
TEST_F(EngineTest, ReasonsThatNameEarlierFailuresStayBounded) {
  FillInputs(2);
  RunLayer(2);
  OpOptions blocking;
  blocking.blocking = true;
  auto run = [&](int r, CollectiveKind kind) {
    Waiter w;
    const Status posted =
        kind == CollectiveKind::kDispatch
            ? engine_->SubmitDispatch(frontends_[r]->session, frontends_[r]->Dispatch(2), blocking,
                                      w.Done())
            : engine_->SubmitCombine(frontends_[r]->session, frontends_[r]->Combine(2), blocking,
                                     w.Done());
    EXPECT_TRUE(posted.ok()) << posted.ToString();
    return w.Get();
  };
  // Op 1: a dispatch meets a combine, so rank 0's last dispatch failed.
  Waiter peer;
  ASSERT_TRUE(
      engine_
          ->SubmitCombine(frontends_[1]->session, frontends_[1]->Combine(2), blocking, peer.Done())
          .ok());
  EXPECT_FALSE(run(0, CollectiveKind::kDispatch).ok());
  EXPECT_FALSE(peer.Get().ok());
  // Then, op after op, the rank whose dispatch failed combines first (refused, the op
  // abandoned with that reason) and its peer's dispatch fails with it.
  size_t longest = 0;
  std::string last;
  int first = 0;
  for (int op = 0; op < 60; ++op) {
    const Status refused = run(first, CollectiveKind::kCombine);
    EXPECT_EQ(refused.code(), StatusCode::kFailedPrecondition) << refused.ToString();
    const Status failed = run(1 - first, CollectiveKind::kDispatch);
    ASSERT_EQ(failed.code(), StatusCode::kFailedPrecondition)
        << "op " << op << ": " << failed.ToString();
    for (const Status* s : {&refused, &failed}) {
      longest = std::max(longest, s->message().size());
    }
    last = failed.message();
    first = 1 - first;
  }
  EXPECT_LT(longest, 1024u) << last;
  // The first cause is still named.
  EXPECT_NE(last.find("ranks posted different ops"), std::string::npos) << last;
  FillInputs(2);
  RunLayer(2);
  ExpectWeightedSums(2);
}

// A frontend writing its routing while an update reads it (its bug: the buffer is shared)
// gets an answer either way, and no id it slips in between the bind's check and its use
// reaches a counter past the experts (that would write the daemon's memory).
TEST_F(EngineTest, RoutingWrittenWhileItIsBoundNeverReachesPastTheExperts) {
  FillInputs(kTokens);
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    int32_t* topk = frontends_[0]->topk();
    for (int32_t bad = 1 << 30; !stop.load(std::memory_order_relaxed); bad ^= 1 << 30) {
      for (int i = 0; i < kTokens * kTopK; ++i) {
        __atomic_store_n(&topk[i], bad | (i % kExperts), __ATOMIC_RELAXED);
      }
    }
  });
  OpOptions blocking;
  blocking.blocking = true;
  int refused = 0;
  for (int i = 0; i < 20'000; ++i) {
    Waiter w;
    ASSERT_TRUE(engine_
                    ->SubmitUpdate(frontends_[0]->session, frontends_[0]->Update(kTokens), blocking,
                                   w.Done())
                    .ok());
    const Status status = w.Get();
    if (status.ok()) continue;
    ++refused;
    ASSERT_EQ(status.code(), StatusCode::kInvalidArgument) << status.ToString();
    ASSERT_NE(status.message().find("topk_idx["), std::string::npos) << status.ToString();
  }
  stop = true;
  writer.join();
  EXPECT_GT(refused, 0) << "the writer never got a bad id in";
  FillInputs(2);
  RunLayer(2);
  ExpectWeightedSums(2);
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
  // Refused at submission, without waiting for the peers.
  for (int r = 0; r < kRanks; ++r) {
    Status status = engine_->SubmitCombine(frontends_[r]->session, frontends_[r]->Combine(4),
                                           blocking, [](Status) {});
    EXPECT_EQ(status.code(), StatusCode::kFailedPrecondition);
    EXPECT_NE(status.message().find("no Dispatch was submitted since the last UpdateHandle"),
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

// The watchdog's probe: a rank thread stuck in one op (here a fence wait nobody signals) is
// reported by rank once it exceeds the limit; the worker is live again once the op ends.
TEST_F(EngineTest, LivenessNamesAWorkerBusyBeyondTheLimit) {
  EXPECT_TRUE(engine_->CheckLiveness(milliseconds(50)).ok());
  Frontend& f = *frontends_[1];
  FenceInfo fence = engine_->CreateFence(f.session).value();
  OpOptions fenced;
  fenced.wait = FenceOp{fence.id, 3};
  fenced.blocking = true;
  Waiter w;
  ASSERT_TRUE(engine_->SubmitUpdate(f.session, f.Update(1), fenced, w.Done()).ok());
  Status live = OkStatus();
  for (int i = 0; i < 300 && live.ok(); ++i) {  // the wait lasts op_timeout (2 s)
    std::this_thread::sleep_for(milliseconds(10));
    live = engine_->CheckLiveness(milliseconds(50));
  }
  EXPECT_EQ(live.code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(live.message().find("group 'g' rank 1"), std::string::npos) << live.ToString();
  EXPECT_TRUE(engine_->CheckLiveness(milliseconds(5000)).ok()) << "within a generous limit";
  EXPECT_EQ(w.Get().code(), StatusCode::kDeadlineExceeded);
  Status after = engine_->CheckLiveness(milliseconds(50));
  for (int i = 0; i < 100 && !after.ok(); ++i) {  // the worker returns from the op's callback
    std::this_thread::sleep_for(milliseconds(10));
    after = engine_->CheckLiveness(milliseconds(50));
  }
  EXPECT_TRUE(after.ok()) << after.ToString();
}

// on_op_finished and ListSessions see every op with its session, group, code and bytes.
TEST(EngineHooksTest, OpFinishedHookAndSessionListCountOps) {
  std::mutex mutex;
  std::vector<std::tuple<std::string, std::string, int, StatusCode, uint64_t>> records;
  auto backend = CreateCpuBackend({1, milliseconds(200)});
  ASSERT_TRUE(backend.ok());
  EngineOptions options;
  options.on_op_finished = [&](const OpRecord& op) {
    std::lock_guard lock(mutex);
    records.emplace_back(std::string(op.kind), std::string(op.group), op.rank, op.code,
                         op.payload_bytes);
  };
  auto engine = Engine::Create(std::move(backend).value(), options).value();
  GroupConfig config = Config("hooks");
  config.ranks = {0};
  ASSERT_TRUE(engine->CreateGroup(std::nullopt, config, true).ok());
  Frontend f(*engine, 0);
  f.handle = engine->CreateHandle(f.session, "hooks", 0, "", false).value().id;
  for (int t = 0; t < 2; ++t) {
    for (int k = 0; k < kTopK; ++k) {
      f.topk()[t * kTopK + k] = k;
      f.weights()[t * kTopK + k] = 0.5f;
    }
  }
  FenceInfo fence = engine->CreateFence(f.session).value();
  OpOptions blocking;
  blocking.blocking = true;
  Waiter ok;
  ASSERT_TRUE(engine->SubmitUpdate(f.session, f.Update(2), blocking, ok.Done()).ok());
  ASSERT_TRUE(ok.Get().ok());
  OpOptions stuck = blocking;
  stuck.wait = FenceOp{fence.id, 9};  // times out after 200 ms
  Waiter failed;
  ASSERT_TRUE(engine->SubmitUpdate(f.session, f.Update(2), stuck, failed.Done()).ok());
  EXPECT_EQ(failed.Get().code(), StatusCode::kDeadlineExceeded);

  std::lock_guard lock(mutex);
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0], std::make_tuple(std::string("update"), std::string("hooks"), 0,
                                        StatusCode::kOk, uint64_t{0}));
  EXPECT_EQ(std::get<3>(records[1]), StatusCode::kDeadlineExceeded);
  const auto sessions = engine->ListSessions();
  ASSERT_EQ(sessions.size(), 1u);
  EXPECT_EQ(sessions[0].id, f.session);
  EXPECT_EQ(sessions[0].ops_completed, 1u);
  EXPECT_EQ(sessions[0].ops_failed, 1u);
  EXPECT_EQ(sessions[0].peer.pid, -1) << "no peer credentials in-process";
}

}  // namespace
}  // namespace epd::engine_testing
