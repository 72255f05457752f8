// Bad input: each request gets its canonical code and a message naming the
// field and the value, and the clients keep working: every test runs a good layer on both
// ranks before and after the bad request, checked bit for bit.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "tests/integration/client_test_support.h"

namespace epd::testing {
namespace {

using example::Problem;

class BadInputTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto daemon = DaemonProcess::Start({}, 2);
    ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
    daemon_ = std::move(daemon).value();
  }
  static void TearDownTestSuite() { daemon_.reset(); }

  void SetUp() override {
    problem_ = SmallProblem();
    options_.group = UniqueName("bad");
    auto world = MakeRanks(daemon_->address(), problem_, options_);
    ASSERT_TRUE(world.ok()) << world.status().ToString();
    world_ = std::move(world).value();
    ASSERT_EPD_OK(RunGoodLayer(world_, 0));
  }
  void TearDown() override {
    // The daemon and every client still work after the bad request.
    EXPECT_EPD_OK(RunGoodLayer(world_, 1));
    EXPECT_EPD_OK(RunGoodLayer(world_, 2, /*fenced=*/true));
  }

  example::RankRunner& rank0() { return *world_[0].runner; }
  Session& session0() { return rank0().session(); }
  // A fresh Update of n tokens on rank 0 (staged inputs of layer 9).
  Status Update0(const v1::TensorRef& topk, std::optional<v1::TensorRef> weights,
                 v1::OpOptions options = BlockingOptions()) {
    return session0().Update(rank0().handle_id(), topk, weights, options);
  }
  int StageRank0() {
    const int n = 5;
    EXPECT_EPD_OK(rank0().Stage(example::MakeInputs(problem_, 3, 0, 9, n, true)));
    return n;
  }

  static std::unique_ptr<DaemonProcess> daemon_;
  Problem problem_;
  example::RankRunnerOptions options_;
  std::vector<RankClient> world_;
};
std::unique_ptr<DaemonProcess> BadInputTest::daemon_;

// ---------------------------------------------------------------- ids

TEST_F(BadInputTest, UnknownSessionIdIsNotFound) {
  v1::RegisterBufferRequest request;
  request.set_session_id(0x1234567);
  *request.mutable_source() = rank0().buffer().Source();
  v1::RegisterBufferResponse response;
  // With a well-formed secret header: the id is what is wrong.
  EXPECT_EPD_ERROR(RawCall(world_[0].client->stub(), &v1::Epd::Stub::RegisterBuffer, request,
                           &response, {session0().secret()}),
                   StatusCode::kNotFound, "session_id", std::to_string(0x1234567));
  // Without one, the daemon asks for the header before it looks the session up.
  EXPECT_EPD_ERROR(
      RawCall(world_[0].client->stub(), &v1::Epd::Stub::RegisterBuffer, request, &response),
      StatusCode::kPermissionDenied, "session_id", std::to_string(0x1234567), kSessionSecretHeader,
      "missing");
}

TEST_F(BadInputTest, UnknownBufferIdIsNotFound) {
  const int n = StageRank0();
  v1::TensorRef topk = rank0().topk_ref(n);
  topk.set_buffer_id(999);
  EXPECT_EPD_ERROR(Update0(topk, rank0().weights_ref(n)), StatusCode::kNotFound,
                   "topk_idx.buffer_id = 999");
  EXPECT_EPD_ERROR(session0().ReleaseBuffer(999), StatusCode::kNotFound, "buffer_id = 999");
}

TEST_F(BadInputTest, AnotherSessionsIdsAreNotFound) {
  // A second frontend of rank 1 owns more objects than rank 0's session has ids.
  auto client = ConnectOrDie(daemon_->address());
  ASSERT_NE(client, nullptr);
  auto other = client->OpenSession(1, "other-frontend");
  ASSERT_TRUE(other.ok()) << other.status().ToString();
  auto shm = SharedMemoryBuffer::Create(1 << 16);
  ASSERT_TRUE(shm.ok());
  uint64_t foreign_buffer = 0;
  for (int i = 0; i < 12; ++i) {
    auto id = (*other)->RegisterBuffer((*shm)->Source());
    ASSERT_TRUE(id.ok()) << id.status().ToString();
    foreign_buffer = *id;
  }
  Problem foreign_problem = problem_;
  const std::string foreign_group = UniqueName("foreign");
  ASSERT_TRUE((*other)->CreateGroup(foreign_problem.Config(foreign_group)).ok());
  auto foreign_handle = (*other)->CreateHandle(foreign_group);
  ASSERT_TRUE(foreign_handle.ok()) << foreign_handle.status().ToString();

  const int n = StageRank0();
  ASSERT_EPD_OK(Update0(rank0().topk_ref(n), rank0().weights_ref(n)));
  v1::TensorRef x = rank0().x_ref(n);
  x.set_buffer_id(foreign_buffer);
  EXPECT_EPD_ERROR(session0().Dispatch(rank0().handle_id(), x, BlockingOptions()),
                   StatusCode::kNotFound, fmt::format("x.buffer_id = {}", foreign_buffer));
  EXPECT_EPD_ERROR(session0().ReleaseBuffer(foreign_buffer), StatusCode::kNotFound,
                   fmt::format("buffer_id = {}", foreign_buffer));
  EXPECT_EPD_ERROR(
      session0().Dispatch(foreign_handle->handle_id(), rank0().x_ref(n), BlockingOptions()),
      StatusCode::kNotFound, fmt::format("handle_id = {}", foreign_handle->handle_id()));
  EXPECT_EPD_ERROR(session0().DestroyHandle(foreign_handle->handle_id()), StatusCode::kNotFound,
                   fmt::format("handle_id = {}", foreign_handle->handle_id()));
  // The owner still has them.
  EXPECT_EPD_OK((*other)->ReleaseBuffer(foreign_buffer));
  EXPECT_EPD_OK((*other)->DestroyHandle(foreign_handle->handle_id()));
}

TEST_F(BadInputTest, UnknownFenceIsNotFound) {
  const int n = StageRank0();
  v1::OpOptions options;
  options.mutable_signal()->set_fence_id(777);
  options.mutable_signal()->set_value(1);
  EXPECT_EPD_ERROR(Update0(rank0().topk_ref(n), rank0().weights_ref(n), options),
                   StatusCode::kNotFound, "options.signal.fence_id = 777");
  EXPECT_EPD_ERROR(session0().DestroyFence(777), StatusCode::kNotFound, "fence_id = 777");
}

TEST_F(BadInputTest, UnknownShmNameIsNotFound) {
  v1::MemorySource source;
  source.set_shm_name("/epd-test-no-such-object");
  source.set_device(-1);
  source.set_size(4096);
  EXPECT_EPD_ERROR(session0().RegisterBuffer(source).status(), StatusCode::kNotFound,
                   "/epd-test-no-such-object");
}

// ---------------------------------------------------------------- tensors vs the group

TEST_F(BadInputTest, DtypeNotMatchingGroupIsInvalid) {
  const int n = StageRank0();
  ASSERT_EPD_OK(Update0(rank0().topk_ref(n), rank0().weights_ref(n)));
  v1::TensorRef x = rank0().x_ref(n);
  x.set_dtype(v1::DTYPE_FP16);
  EXPECT_EPD_ERROR(session0().Dispatch(rank0().handle_id(), x, BlockingOptions()),
                   StatusCode::kInvalidArgument, "x.dtype = fp16", "bf16");
  v1::TensorRef topk = rank0().topk_ref(n);
  topk.set_dtype(v1::DTYPE_FP32);
  EXPECT_EPD_ERROR(Update0(topk, rank0().weights_ref(n)), StatusCode::kInvalidArgument,
                   "topk_idx.dtype = fp32");
  v1::TensorRef weights = rank0().weights_ref(n);
  weights.set_dtype(v1::DTYPE_BF16);
  EXPECT_EPD_ERROR(Update0(rank0().topk_ref(n), weights), StatusCode::kInvalidArgument,
                   "topk_weights.dtype = bf16", "fp32");
}

TEST_F(BadInputTest, ShapeNotMatchingIsInvalid) {
  const int n = StageRank0();
  v1::TensorRef topk = MakeTensorRef(rank0().buffer_id(), rank0().topk_ref(n).offset_bytes(),
                                     v1::DTYPE_INT32, {n, problem_.top_k + 1});
  EXPECT_EPD_ERROR(Update0(topk, std::nullopt), StatusCode::kInvalidArgument,
                   "topk_idx.shape[1] = 3", "top_k = 2");
  v1::TensorRef weights = MakeTensorRef(rank0().buffer_id(), rank0().weights_ref(n).offset_bytes(),
                                        v1::DTYPE_FP32, {n - 1, problem_.top_k});
  EXPECT_EPD_ERROR(Update0(rank0().topk_ref(n), weights), StatusCode::kInvalidArgument,
                   "topk_weights.shape[0] = 4", "5");
  ASSERT_EPD_OK(Update0(rank0().topk_ref(n), rank0().weights_ref(n)));
  // x must have the n tokens bound by the update.
  v1::TensorRef x = MakeTensorRef(rank0().buffer_id(), 0, v1::DTYPE_BF16, {n + 1, 64});
  EXPECT_EPD_ERROR(session0().Dispatch(rank0().handle_id(), x, BlockingOptions()),
                   StatusCode::kInvalidArgument, "x.shape[0] = 6", "5");
  v1::TensorRef flat = MakeTensorRef(rank0().buffer_id(), 0, v1::DTYPE_BF16, {n * 64});
  EXPECT_EPD_ERROR(session0().Dispatch(rank0().handle_id(), flat, BlockingOptions()),
                   StatusCode::kInvalidArgument, "x.shape", "2 dimensions");
}

TEST_F(BadInputTest, HiddenSizeNotMatchingIsInvalid) {
  const int n = StageRank0();
  ASSERT_EPD_OK(Update0(rank0().topk_ref(n), rank0().weights_ref(n)));
  v1::TensorRef x = MakeTensorRef(rank0().buffer_id(), 0, v1::DTYPE_BF16, {n, 72});
  EXPECT_EPD_ERROR(session0().Dispatch(rank0().handle_id(), x, BlockingOptions()),
                   StatusCode::kInvalidArgument, "x.shape[1] = 72", "hidden = 64");
  v1::TensorRef out = rank0().out_ref(n);
  out.set_shape(1, 56);
  EXPECT_EPD_ERROR(session0().Combine(rank0().handle_id(), out, std::nullopt, BlockingOptions()),
                   StatusCode::kInvalidArgument, "out.shape[1] = 56", "hidden = 64");
}

TEST_F(BadInputTest, TensorOutsideItsBufferIsInvalid) {
  const int n = StageRank0();
  ASSERT_EPD_OK(Update0(rank0().topk_ref(n), rank0().weights_ref(n)));
  const size_t size = rank0().buffer().size();
  v1::TensorRef out = rank0().out_ref(n);
  out.set_offset_bytes(size - 64);  // 5 x 64 bf16 = 640 bytes do not fit in the last 64
  EXPECT_EPD_ERROR(session0().Combine(rank0().handle_id(), out, std::nullopt, BlockingOptions()),
                   StatusCode::kInvalidArgument, "out", fmt::format("offset_bytes = {}", size - 64),
                   "outside");
  v1::TensorRef x = rank0().x_ref(n);
  x.set_offset_bytes(uint64_t{1} << 40);
  EXPECT_EPD_ERROR(session0().Dispatch(rank0().handle_id(), x, BlockingOptions()),
                   StatusCode::kInvalidArgument, "x", "offset_bytes = 1099511627776", "outside");
}

// ---------------------------------------------------------------- routing

TEST_F(BadInputTest, ExpertIdOutOfRangeIsInvalid) {
  for (const int32_t bad : {4, 1000, -2}) {
    const int n = StageRank0();
    rank0().buffer().at<int32_t>(rank0().topk_ref(n).offset_bytes())[3] = bad;  // token 1, k 1
    EXPECT_EPD_ERROR(Update0(rank0().topk_ref(n), rank0().weights_ref(n)),
                     StatusCode::kInvalidArgument, fmt::format("topk_idx[1, 1] = {}", bad),
                     "[-1, 4)");
  }
}

TEST_F(BadInputTest, RejectedRoutingFailsTheCollectiveForEveryRank) {
  // A non-blocking update with a bad expert id is answered once enqueued (the ids are checked
  // on the rank's stream, as on a GPU); the dispatch that follows fails on both ranks with a
  // message naming the cause, not a hang.
  const int n = StageRank0();
  rank0().buffer().at<int32_t>(rank0().topk_ref(n).offset_bytes())[0] = 99;
  EXPECT_TRUE(Update0(rank0().topk_ref(n), rank0().weights_ref(n), v1::OpOptions()).ok());
  const std::vector<Status> statuses = RunOnRanks(2, [&](int r) -> Status {
    example::RankRunner& runner = *world_[r].runner;
    if (r == 1) {
      const auto in = example::MakeInputs(problem_, 3, 1, 9, 4, true);
      EPD_RETURN_IF_ERROR(runner.Stage(in));
      EPD_RETURN_IF_ERROR(runner.session().Update(runner.handle_id(), runner.topk_ref(4),
                                                  runner.weights_ref(4), BlockingOptions()));
      return runner.session().Dispatch(runner.handle_id(), runner.x_ref(4), BlockingOptions());
    }
    return runner.session().Dispatch(runner.handle_id(), runner.x_ref(n), BlockingOptions());
  });
  EXPECT_EPD_ERROR(statuses[0], StatusCode::kFailedPrecondition, "topk_idx[0, 0] = 99");
  EXPECT_EPD_ERROR(statuses[1], StatusCode::kFailedPrecondition, "rank 0", "topk_idx[0, 0] = 99");
}

TEST_F(BadInputTest, MoreThanMaxTokensIsInvalid) {
  const int T = problem_.max_tokens;
  // The buffer is large enough: only the group's T limits n.
  v1::TensorRef topk = MakeTensorRef(rank0().buffer_id(), rank0().topk_ref(1).offset_bytes(),
                                     v1::DTYPE_INT32, {T + 1, problem_.top_k});
  EXPECT_EPD_ERROR(Update0(topk, std::nullopt), StatusCode::kInvalidArgument,
                   "topk_idx.shape[0] = 17", "max_tokens_per_rank = 16");
}

TEST_F(BadInputTest, DispatchBeforeAnyUpdateIsFailedPrecondition) {
  auto handle = session0().CreateHandle(options_.group);
  ASSERT_TRUE(handle.ok()) << handle.status().ToString();
  EXPECT_EPD_ERROR(session0().Dispatch(handle->handle_id(), rank0().x_ref(4), BlockingOptions()),
                   StatusCode::kFailedPrecondition,
                   fmt::format("handle_id = {}", handle->handle_id()), "UpdateHandle");
  EXPECT_EPD_OK(session0().DestroyHandle(handle->handle_id()));
}

// ---------------------------------------------------------------- acting for another rank

TEST_F(BadInputTest, SessionActingForAnotherRankIsDenied) {
  const int n = StageRank0();
  v1::UpdateHandleRequest update;
  update.set_handle_id(rank0().handle_id());
  *update.mutable_topk_idx() = rank0().topk_ref(n);
  update.set_rank(1);
  *update.mutable_options() = BlockingOptions();
  auto answer = session0().UpdateAsync(update);
  EXPECT_EPD_ERROR(session0().Await(answer, "update"), StatusCode::kPermissionDenied, "rank = 1",
                   "session's rank 0");

  v1::DispatchRequest dispatch;
  dispatch.set_handle_id(rank0().handle_id());
  *dispatch.mutable_x() = rank0().x_ref(n);
  dispatch.set_rank(1);
  answer = session0().DispatchAsync(dispatch);
  EXPECT_EPD_ERROR(session0().Await(answer, "dispatch"), StatusCode::kPermissionDenied, "rank = 1");

  v1::CombineRequest combine;
  combine.set_handle_id(rank0().handle_id());
  *combine.mutable_out() = rank0().out_ref(n);
  combine.set_rank(1);
  answer = session0().CombineAsync(combine);
  EXPECT_EPD_ERROR(session0().Await(answer, "combine"), StatusCode::kPermissionDenied, "rank = 1");

  v1::CreateHandleRequest create;
  create.set_group(options_.group);
  create.set_rank(1);
  EXPECT_EPD_ERROR(session0().CreateHandle(create).status(), StatusCode::kPermissionDenied,
                   "rank = 1", "session's rank 0");
}

// ---------------------------------------------------------------- groups

TEST_F(BadInputTest, BadGroupConfigIsInvalid) {
  Problem bad = problem_;
  bad.experts = 3;  // not a multiple of R = 2
  EXPECT_EPD_ERROR(session0().CreateGroup(bad.Config(UniqueName("g"))).status(),
                   StatusCode::kInvalidArgument, "experts=3");
  bad = problem_;
  bad.ranks = 3;  // the daemon has 2 ranks
  bad.experts = 6;
  EXPECT_EPD_ERROR(session0().CreateGroup(bad.Config(UniqueName("g"))).status(),
                   StatusCode::kInvalidArgument, "rank 2");
  bad = problem_;
  bad.hidden = 60;
  EXPECT_EPD_ERROR(session0().CreateGroup(bad.Config(UniqueName("g"))).status(),
                   StatusCode::kInvalidArgument, "hidden=60");
  bad = problem_;
  bad.top_k = 8;
  EXPECT_EPD_ERROR(session0().CreateGroup(bad.Config(UniqueName("g"))).status(),
                   StatusCode::kInvalidArgument, "top_k=8");
  // Same name, different shape.
  bad = problem_;
  bad.hidden = 128;
  EXPECT_EPD_ERROR(session0().CreateGroup(bad.Config(options_.group)).status(),
                   StatusCode::kAlreadyExists, options_.group);
}

// ---------------------------------------------------------------- concurrency

TEST_F(BadInputTest, BadRequestsDoNotDisturbClientsWorkingMeanwhile) {
  // Another pair of frontends runs layers on its own group the whole time.
  example::RankRunnerOptions other_options;
  other_options.group = UniqueName("busy");
  auto other = MakeRanks(daemon_->address(), problem_, other_options);
  ASSERT_TRUE(other.ok()) << other.status().ToString();
  std::atomic<bool> stop{false};
  Status busy_status;
  std::thread busy([&] {
    for (int layer = 0; !stop.load() && busy_status.ok(); ++layer) {
      busy_status = RunGoodLayer(*other, layer, layer % 2 == 1);
    }
  });

  const int n = StageRank0();
  for (int i = 0; i < 20; ++i) {
    v1::TensorRef topk = rank0().topk_ref(n);
    topk.set_buffer_id(999);
    EXPECT_EPD_ERROR(Update0(topk, std::nullopt), StatusCode::kNotFound, "999");
    topk = rank0().topk_ref(problem_.max_tokens + 1);
    EXPECT_EPD_ERROR(Update0(topk, std::nullopt), StatusCode::kInvalidArgument, "17");
    v1::UpdateHandleRequest spoof;
    spoof.set_handle_id(rank0().handle_id());
    *spoof.mutable_topk_idx() = rank0().topk_ref(n);
    spoof.set_rank(1);
    auto answer = session0().UpdateAsync(spoof);
    EXPECT_EPD_ERROR(session0().Await(answer, "update"), StatusCode::kPermissionDenied, "rank = 1");
    EXPECT_EPD_ERROR(session0().RegisterBuffer(v1::MemorySource()).status(),
                     StatusCode::kInvalidArgument);
  }
  stop = true;
  busy.join();
  EXPECT_TRUE(busy_status.ok()) << busy_status.ToString();
}

}  // namespace
}  // namespace epd::testing
