// The engine over the cpu backend, in one process: a fixture of two frontends (one session
// per rank, a shm buffer each, a handle on group "g") shared by the engine's test files.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <future>
#include <mutex>
#include <thread>

#include "daemon/backends/cpu/cpu_backend.h"
#include "daemon/backends/cpu/shm_region.h"
#include "daemon/core/engine.h"

namespace epd::engine_testing {

using std::chrono::milliseconds;

constexpr int kRanks = 2;
constexpr int kHidden = 16;
constexpr int kTokens = 8;
constexpr int kTopK = 2;
constexpr int kExperts = 4;

inline GroupConfig Config(std::string name = "g") {
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

// A fence of a session with its page mapped here, as a frontend maps it.
struct MappedFence {
  FenceInfo info;
  std::unique_ptr<ShmRegion> page;
  uint64_t* counter = nullptr;  // inside page
};
inline MappedFence MapNewFence(Engine& engine, SessionId session) {
  MappedFence fence;
  fence.info = engine.CreateFence(session).value();
  fence.page = ShmRegion::Open(fence.info.source.shm_name, "fence").value();
  fence.counter = reinterpret_cast<uint64_t*>(static_cast<char*>(fence.page->data()) +
                                              fence.info.counter_offset);
  return fence;
}

inline std::string UniqueShmName() {
  static std::atomic<int> next{0};
  return "/epd-test-" + std::to_string(getpid()) + "-" + std::to_string(next++);
}

// Polls ListSessions until `session` has `want` ops on the backend's lanes not yet passed
// (at most 10 s): how a test knows an op is pending before it acts. Returns the last count.
inline uint64_t WaitForOpsRunning(Engine& engine, SessionId session, uint64_t want) {
  uint64_t got = ~uint64_t{0};
  for (int i = 0; i < 1000; ++i) {
    for (const SessionSummary& s : engine.ListSessions()) {
      if (s.id == session) got = s.ops_running;
    }
    if (got == want) break;
    std::this_thread::sleep_for(milliseconds(10));
  }
  return got;
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
    options.on_op_finished = [this](const OpRecord& record) {
      std::lock_guard lock(records_mutex_);
      records_.push_back(Record{std::string(record.kind), std::string(record.group), record.rank,
                                record.code, record.payload_bytes});
    };
    engine_ = Engine::Create(std::move(backend).value(), options).value();
    GroupConfig config = Config();
    config.algorithm = algorithm_;
    ASSERT_TRUE(engine_->CreateGroup(std::nullopt, config, /*persistent=*/true).ok());
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

  Algorithm algorithm_ = Algorithm::kLowLatency;  // of group "g"; set before SetUp

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

  // What on_op_finished reported, copied out of the callback.
  struct Record {
    std::string kind, group;
    int rank = 0;
    StatusCode code = StatusCode::kOk;
    uint64_t payload_bytes = 0;
  };
  std::vector<Record> Records() {
    std::lock_guard lock(records_mutex_);
    return records_;
  }

  std::mutex records_mutex_;
  std::vector<Record> records_;
  std::unique_ptr<Engine> engine_;
  std::vector<std::unique_ptr<Frontend>> frontends_;
};

}  // namespace epd::engine_testing
