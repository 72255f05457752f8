// The high-throughput algorithm on the frontend-launched data path, launched from this test
// process (FrontendOps) against the real `epd --backend cuda`: one rank on GPU 0, checked bit
// for bit against the cpu reference (daemon/backends/cpu/reference_ops.h) for the token counts
// 0, 1, T-1, T, no expert at all, a hot expert, a recv_capacity overflow (RESOURCE_EXHAUSTED
// worded as on the daemon's streams, then the next op works) and bad expert ids. Graphs, more
// ranks and a killed frontend run through the example frontend (frontend_launch_test.cc).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "client/epd/frontend_ops.h"
#include "client/epd/handle_view.h"
#include "common/cuda_check.h"
#include "common/cuda_copy.h"
#include "daemon/backends/cpu/reference_ops.h"
#include "daemon/core/group_config.h"
#include "tests/gpu/frontend_processes.h"
#include "tests/integration/client_test_support.h"

namespace epd::testing {
namespace {

// fp32 rows of 4128 bytes: two copy parts of the dispatch kernel, the second one partial.
constexpr int kExperts = 16, kHidden = 1032, kTokens = 48, kTopK = 4;
constexpr int kHotExpert = 5;

enum class Routing { kRandom, kAllAbsent, kHotExpert };

struct Inputs {
  int n = 0;
  std::vector<float> x;        // [n, H]
  std::vector<int32_t> idx;    // [n, K]
  std::vector<float> weights;  // [n, K]
};

// Values and weights are multiples of 1/8: every product and sum is exact in fp32, so a
// mismatch is a wrong row, never rounding.
Inputs MakeHtInputs(int n, Routing routing, uint32_t seed) {
  std::mt19937 rng(seed);
  Inputs in;
  in.n = n;
  in.x.resize(static_cast<size_t>(n) * kHidden);
  for (float& v : in.x) v = static_cast<float>(static_cast<int>(rng() % 17) - 8) / 8.0f;
  in.idx.assign(static_cast<size_t>(n) * kTopK, -1);
  in.weights.resize(static_cast<size_t>(n) * kTopK);
  for (float& w : in.weights) w = static_cast<float>(1 + rng() % 8) / 8.0f;
  if (routing == Routing::kAllAbsent) return in;
  for (int t = 0; t < n; ++t) {
    int32_t* row = &in.idx[static_cast<size_t>(t) * kTopK];
    for (int k = 0; k < kTopK; ++k) {
      if (routing == Routing::kHotExpert && k == 0) {
        row[k] = kHotExpert;
        continue;
      }
      if (rng() % 6 == 0) continue;  // -1
      int e;
      do {
        e = static_cast<int>(rng() % kExperts);
      } while (std::find(row, row + k, e) != row + k);
      row[k] = e;
    }
  }
  return in;
}

GroupConfig CoreConfig(const std::string& name, int recv_capacity) {
  GroupConfig c;
  c.name = name;
  c.ranks = {0};
  c.experts = kExperts;
  c.hidden = kHidden;
  c.max_tokens_per_rank = kTokens;
  c.top_k = kTopK;
  c.dtype = DType::kFp32;
  c.algorithm = Algorithm::kHighThroughput;
  c.recv_capacity = recv_capacity;
  return c;
}

void ExpectBytesEqual(const void* want, const void* got, size_t bytes, const std::string& what) {
  if (std::memcmp(want, got, bytes) == 0) return;
  const auto* a = static_cast<const unsigned char*>(want);
  const auto* b = static_cast<const unsigned char*>(got);
  size_t i = 0;
  while (a[i] == b[i]) ++i;
  ADD_FAILURE() << what << ": first difference at byte " << i << " of " << bytes;
}

class HighThroughputFrontendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (VisibleGpus() == 0) {
      GTEST_SKIP() << "no CUDA GPU: the frontend-launched path needs the cuda backend";
    }
    auto daemon =
        DaemonProcess::Start({"--backend", "cuda", "--gpus", "0", "--op-timeout-ms", "5000"});
    ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
    daemon_ = std::move(daemon).value();
    client_ = ConnectOrDie(daemon_->address());
    ASSERT_NE(client_, nullptr);
    ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
    ASSERT_EQ(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), cudaSuccess);
    const size_t token_bytes = size_t{kTokens} * kHidden * sizeof(float);
    const size_t selection_bytes = size_t{kTokens} * kTopK * 4;
    ASSERT_EQ(cudaMalloc(&x_, token_bytes), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&out_, token_bytes), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&idx_, selection_bytes), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&weights_, selection_bytes), cudaSuccess);
  }

  void TearDown() override {
    ops_.reset();
    view_.reset();
    if (session_ != nullptr) {
      EXPECT_TRUE(session_->Close().ok());
    }
    for (void* p : {x_, out_, idx_, weights_}) {
      if (p != nullptr) cudaFree(p);
    }
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  // Creates the group and this rank's handle and maps its data plane (R = 1: attaching needs
  // no peer). sm_budget 0: the daemon's default.
  void Open(const std::string& group, int recv_capacity, int sm_budget = 0) {
    config_ = CoreConfig(group, recv_capacity);
    layout_ = ComputeHandleLayout(config_);
    auto session = client_->OpenSession(0, "ht-frontend-test");
    ASSERT_TRUE(session.ok()) << session.status().ToString();
    session_ = std::move(session).value();
    v1::GroupConfig proto = OneGpuFp32Group(group, kTokens, kHidden, kTopK, kExperts);
    proto.set_algorithm(v1::ALGORITHM_HIGH_THROUGHPUT);
    proto.set_recv_capacity(recv_capacity);
    proto.set_sm_budget(sm_budget);
    auto created = session_->CreateGroup(proto);
    ASSERT_TRUE(created.ok()) << created.status().ToString();
    auto handle = session_->CreateHandle(group);
    ASSERT_TRUE(handle.ok()) << handle.status().ToString();
    // The reference writes into a region laid out as the daemon's.
    ASSERT_EQ(handle->buffers().total_bytes(), layout_.exported_bytes);
    ASSERT_EQ(handle->buffers().expert_rows_offset(), layout_.expert_rows_offset);
    ASSERT_EQ(handle->buffers().recv_rows(), layout_.recv_rows);
    auto view = HandleView::Open(*handle);
    ASSERT_TRUE(view.ok()) << view.status().ToString();
    view_ = std::move(view).value();
    auto info = session_->AttachDataPlane(view_->handle_id());
    ASSERT_TRUE(info.ok()) << info.status().ToString();
    EXPECT_EQ(info->config().algorithm(), v1::ALGORITHM_HIGH_THROUGHPUT);
    // The grid bound a frontend launches with folds in the group's SM budget.
    EXPECT_GE(info->max_blocks(), 1);
    EXPECT_LE(info->max_blocks(), created->sm_budget()) << "the SM budget must bound the grid";
    max_blocks_ = info->max_blocks();
    auto ops = FrontendOps::Open(*info, *view_);
    ASSERT_TRUE(ops.ok()) << ops.status().ToString();
    ops_ = std::move(ops).value();
  }

  // Update + dispatch on the test's stream; the device errors they recorded.
  Status LaunchDispatch(const Inputs& in) {
    if (in.n > 0) {
      // Landed before the kernels on stream_ read them (common/cuda_copy.h).
      EPD_RETURN_IF_ERROR(cuda::CopyNow(x_, in.x.data(), in.x.size() * sizeof(float)));
      EPD_RETURN_IF_ERROR(cuda::CopyNow(idx_, in.idx.data(), in.idx.size() * 4));
      EPD_RETURN_IF_ERROR(cuda::CopyNow(weights_, in.weights.data(), in.weights.size() * 4));
    }
    EPD_RETURN_IF_ERROR(ops_->Update(idx_, /*idx_int64=*/false, static_cast<const float*>(weights_),
                                     in.n, stream_));
    EPD_RETURN_IF_ERROR(ops_->Dispatch(x_, stream_));
    EPD_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return ops_->TakeErrors();
  }

  // The reference's routing bind of `in`, as a dispatch source.
  struct Bound {
    std::vector<int32_t> idx = std::vector<int32_t>(size_t{kTokens} * kTopK);
    std::vector<float> weights = std::vector<float>(size_t{kTokens} * kTopK);
    std::vector<int32_t> counts = std::vector<int32_t>(kExperts);
    reference::SourceRank source;
  };
  void Bind(const Inputs& in, Bound* bound) {
    ASSERT_TRUE(reference::BindRouting(config_, in.idx.data(), DType::kInt32, in.weights.data(),
                                       in.n, bound->idx.data(), bound->weights.data(),
                                       bound->counts.data())
                    .ok());
    bound->source = reference::SourceRank{in.n, in.x.data(), bound->idx.data(),
                                          bound->weights.data(), bound->counts.data()};
  }

  // Dispatch, the experts (row r scaled by 1 + r % 3, written back in place) and combine, each
  // compared bit for bit with the reference.
  void RunLayerAndCheck(const Inputs& in, const std::string& what) {
    SCOPED_TRACE(what);
    Status dispatched = LaunchDispatch(in);
    ASSERT_TRUE(dispatched.ok()) << dispatched.ToString();
    Bound bound;
    Bind(in, &bound);
    ASSERT_TRUE(reference::CheckCapacity(config_, {bound.source}).ok());
    std::vector<char> want(layout_.exported_bytes, 0);
    reference::DispatchReceive(config_, 0, {bound.source},
                               reference::ReceiveBuffersAt(want.data(), layout_));
    std::vector<char> got(layout_.exported_bytes);
    const char* region = static_cast<const char*>(view_->recv_x()) - layout_.recv_x_offset;
    ASSERT_EQ(cudaMemcpy(got.data(), region, got.size(), cudaMemcpyDefault), cudaSuccess);
    auto at = [](std::vector<char>& v, size_t offset) { return v.data() + offset; };
    auto compare = [&](size_t offset, size_t bytes, const char* name) {
      ExpectBytesEqual(at(want, offset), at(got, offset), bytes, name);
    };
    // Only what this dispatch wrote: rows past the total and gather entries past
    // recv_offsets[L] keep older contents.
    const int L = config_.local_experts();
    const auto* rank_counts =
        reinterpret_cast<const int32_t*>(at(want, layout_.recv_rank_counts_offset));
    const auto* offsets = reinterpret_cast<const int32_t*>(at(want, layout_.recv_offsets_offset));
    const size_t rows = static_cast<size_t>(rank_counts[0]);
    const size_t row_bytes = config_.recv_row_bytes();
    compare(layout_.recv_rank_counts_offset, layout_.recv_rank_counts_bytes, "recv_rank_counts");
    compare(layout_.recv_rank_offsets_offset, layout_.recv_rank_offsets_bytes, "recv_rank_offsets");
    compare(layout_.recv_counts_offset, layout_.recv_counts_bytes, "recv_counts");
    compare(layout_.recv_offsets_offset, layout_.recv_offsets_bytes, "recv_offsets");
    compare(layout_.recv_x_offset, rows * row_bytes, "recv_x rows");
    compare(layout_.recv_src_offset, rows * 8, "recv_src rows");
    compare(layout_.recv_topk_idx_offset, rows * 4 * kTopK, "recv_topk_idx rows");
    compare(layout_.recv_topk_weights_offset, rows * 4 * kTopK, "recv_topk_weights rows");
    compare(layout_.expert_rows_offset, size_t(offsets[L]) * 4, "expert_rows");
    if (::testing::Test::HasFailure()) return;

    // The experts, on the host: z = row * (1 + r % 3), exact in fp32.
    std::vector<float> z(layout_.recv_rows * kHidden, 0.0f);
    std::memcpy(z.data(), at(want, layout_.recv_x_offset), rows * row_bytes);
    for (size_t r = 0; r < rows; ++r) {
      for (int h = 0; h < kHidden; ++h) z[r * kHidden + h] *= static_cast<float>(1 + r % 3);
    }
    ASSERT_TRUE(cuda::CopyNow(view_->recv_x(), z.data(), rows * row_bytes).ok());
    ASSERT_TRUE(cuda::FillNow(out_, 0x7f, size_t{kTokens} * row_bytes).ok());  // poison
    ASSERT_TRUE(ops_->Combine(out_, stream_).ok());
    ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
    Status combined = ops_->TakeErrors();
    ASSERT_TRUE(combined.ok()) << combined.ToString();
    std::vector<int32_t> slot(size_t{kTokens} * kTopK, -1);
    reference::ComputeSlots(config_, 0, {bound.source}, slot.data());
    std::vector<float> want_out(size_t{kTokens} * kHidden, 0.0f);
    reference::Combine(config_, bound.source, slot.data(), {z.data()}, want_out.data());
    std::vector<float> got_out(size_t{kTokens} * kHidden);
    ASSERT_EQ(cudaMemcpy(got_out.data(), out_, got_out.size() * 4, cudaMemcpyDefault), cudaSuccess);
    ExpectBytesEqual(want_out.data(), got_out.data(), size_t(in.n) * row_bytes, "combine out");
  }

  std::unique_ptr<DaemonProcess> daemon_;
  std::unique_ptr<Client> client_;
  std::unique_ptr<Session> session_;
  std::unique_ptr<HandleView> view_;
  std::unique_ptr<FrontendOps> ops_;
  GroupConfig config_;
  HandleLayout layout_;
  int max_blocks_ = 0;
  cudaStream_t stream_ = nullptr;
  void *x_ = nullptr, *out_ = nullptr, *idx_ = nullptr, *weights_ = nullptr;
};

TEST_F(HighThroughputFrontendTest, EveryTokenCountAndRoutingShapeMatchesTheReference) {
  // Three blocks stride over every row, as the SM budget allows.
  Open("ht-frontend-table", /*recv_capacity=*/0, /*sm_budget=*/3);
  EXPECT_EQ(max_blocks_, 3);
  if (HasFatalFailure()) return;
  uint32_t seed = 1;
  for (int n : {0, 1, kTokens - 1, kTokens, 17}) {
    RunLayerAndCheck(MakeHtInputs(n, Routing::kRandom, seed++), "random n=" + std::to_string(n));
    if (HasFatalFailure()) return;
  }
  RunLayerAndCheck(MakeHtInputs(kTokens, Routing::kAllAbsent, seed++), "every id -1");
  RunLayerAndCheck(MakeHtInputs(kTokens, Routing::kHotExpert, seed++), "hot expert");
  RunLayerAndCheck(MakeHtInputs(3, Routing::kHotExpert, seed++), "hot expert, n=3");
}

// Every token selects the hot expert: T rows for a rank that holds T / 2. Worded as the
// daemon's streams word it (kernels::DescribeGroupOp + DeviceErrorToStatus); the next op, within
// capacity, works and matches.
TEST_F(HighThroughputFrontendTest, RecvCapacityOverflowFailsNamingItThenTheNextOpWorks) {
  const std::string group = "ht-frontend-overflow";
  Open(group, /*recv_capacity=*/kTokens / 2);
  if (HasFatalFailure()) return;
  RunLayerAndCheck(MakeHtInputs(kTokens / 2, Routing::kHotExpert, 40), "within capacity");
  if (HasFatalFailure()) return;
  Status overflow = LaunchDispatch(MakeHtInputs(kTokens, Routing::kHotExpert, 41));
  EXPECT_EQ(overflow.code(), StatusCode::kResourceExhausted) << overflow.ToString();
  EXPECT_NE(overflow.message().find("dispatch of group '" + group + "' on rank 0 (op "),
            std::string::npos)
      << overflow.message();
  EXPECT_NE(
      overflow.message().find("group rank 0 would receive " + std::to_string(kTokens) +
                              " rows, more than recv_capacity=" + std::to_string(kTokens / 2)),
      std::string::npos)
      << overflow.message();
  EXPECT_TRUE(ops_->TakeErrors().ok()) << "reported once";
  RunLayerAndCheck(MakeHtInputs(kTokens / 2 - 1, Routing::kRandom, 42), "after the overflow");
}

TEST_F(HighThroughputFrontendTest, BadExpertIdsFailTheUpdateThenTheNextLayerWorks) {
  const std::string group = "ht-frontend-bad-ids";
  Open(group, /*recv_capacity=*/0);
  if (HasFatalFailure()) return;
  Inputs bad = MakeHtInputs(kTokens, Routing::kRandom, 50);
  bad.idx[5 * kTopK + 2] = kExperts + 3;
  Status status = LaunchDispatch(bad);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << status.ToString();
  EXPECT_EQ(status.message(),
            "update of group '" + group +
                "' on rank 0 (op 0): topk_idx[5, 2] = " + std::to_string(kExperts + 3) +
                " is outside [-1, " + std::to_string(kExperts) + ")");
  RunLayerAndCheck(MakeHtInputs(kTokens, Routing::kRandom, 51), "after bad ids");
}

}  // namespace
}  // namespace epd::testing
