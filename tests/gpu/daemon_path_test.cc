// The full daemon path on GPUs: the real `epd --backend cuda` serving R separate frontend
// processes (the example frontend) that register device tensors through CUDA IPC, map the
// handle's exported receive region, and order ops with fences on their own streams. Also a
// frontend killed while its rank's op is pending: the other ranks get a clear error, the
// daemon frees what the dead session held and keeps serving.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <sstream>
#include <thread>

#include "client/epd/cuda.h"
#include "common/cuda_copy.h"
#include "common/dtype.h"
#include "tests/gpu/cuda_daemon_fixture.h"

namespace epd::testing {
namespace {

class DaemonPathTest : public CudaDaemonTest {
 protected:
  void SetUp() override {
    StartCudaDaemon("the daemon path");
    if (IsSkipped() || HasFatalFailure()) return;
    ASSERT_EQ(node_.ranks(), gpus_);
  }

  std::vector<std::string> ExampleArgs(const std::string& layout, const std::string& dtype,
                                       const std::string& mode, int iterations, int hidden) {
    return {ExampleFrontendPath(), "--address", daemon_->address(),  "--ranks",
            std::to_string(gpus_), "--tokens",  "128",                "--hidden",
            std::to_string(hidden), "--experts", std::to_string(8 * gpus_), "--topk", "4",
            "--layout", layout, "--dtype", dtype, "--mode", mode, "--iterations",
            std::to_string(iterations)};
  }
};

TEST_F(DaemonPathTest, FrontendProcessesGetBitExactResultsThroughIpcAndFences) {
  const int64_t baseline = client_->GetStats()->live_bytes();
  for (const std::string layout : {"expert_major", "rank_major"}) {
    for (const std::string dtype : {"bf16", "fp16", "fp32"}) {
      ExpectExamplePasses(ExampleArgs(layout, dtype, "both", 6, 4104), layout + " " + dtype);
    }
  }
  // High-throughput: packed rows through the same IPC buffers and fences.
  for (const std::string dtype : {"bf16", "fp32"}) {
    std::vector<std::string> args = ExampleArgs("expert_major", dtype, "both", 6, 4104);
    args.insert(args.end(), {"--algorithm", "high_throughput"});
    ExpectExamplePasses(args, "high_throughput " + dtype);
  }
  auto stats = client_->GetStats();
  ASSERT_TRUE(stats.ok());
  EXPECT_GT(stats->dispatch().completed(), 0u);
  // Every example session ended: what they created is gone.
  EXPECT_EQ(stats->live_bytes(), baseline);
}

TEST_F(DaemonPathTest, KilledFrontendFailsItsPeersClearlyAndTheDaemonKeepsServing) {
  if (gpus_ < 2) GTEST_SKIP() << "needs 2 GPUs: a peer must be left waiting";
  const int64_t baseline = client_->GetStats()->live_bytes();
  auto example = ChildProcess::Spawn(ExampleArgs("expert_major", "bf16", "both", 100000, 7168));
  ASSERT_TRUE(example.ok());
  // Wait until the layer loop runs, then kill one rank's process mid-sequence.
  for (int i = 0; i < 300 && client_->GetStats()->dispatch().completed() < 4; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_GE(client_->GetStats()->dispatch().completed(), 4u) << daemon_->ReadLog();
  // The surviving ranks fail (no hang) well within the op timeout, so the example exits.
  ASSERT_NO_FATAL_FAILURE(KillLastRankAndExpectTheExampleToFail(**example, 30'000));
  // Everything the sessions created is released once they are gone: ops still in flight for
  // the dead rank end within the op timeout (5 s here) and drop their references.
  for (int i = 0; i < 300 && client_->GetStats()->live_bytes() != baseline; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  auto groups = client_->ListGroups();
  EXPECT_EQ(client_->GetStats()->live_bytes(), baseline)
      << (groups.ok() ? groups->size() : 0) << " groups left; daemon log:\n" << daemon_->ReadLog();
  // The daemon keeps serving: a fresh set of frontends runs clean.
  ExpectExamplePasses(ExampleArgs("expert_major", "bf16", "both", 4, 7168), "after the kill");
}

// A frontend that captures its side of the ordering (signal `go`, wait `done`) in a CUDA graph
// and launches the graph: the daemon's posted update -> dispatch -> combine run between the two.
TEST_F(DaemonPathTest, FenceStreamOpsWorkInsideACapturedCudaGraph) {
  constexpr int kTokens = 32, kHidden = 1024, kTopK = 2, kExperts = 8;
  auto session = client_->OpenSession(0, "graph-frontend");
  ASSERT_TRUE(session.ok()) << session.status().ToString();
  ASSERT_TRUE(
      (*session)->CreateGroup(OneGpuFp32Group("graph-capture", kTokens, kHidden, kTopK, kExperts)).ok());
  auto handle = (*session)->CreateHandle("graph-capture");
  ASSERT_TRUE(handle.ok()) << handle.status().ToString();

  // x [n, H] f32, topk [n, K] int32, weights [n, K] f32, out [n, H] f32 in one allocation.
  const size_t x_bytes = size_t{kTokens} * kHidden * 4, k_bytes = size_t{kTokens} * kTopK * 4;
  const size_t topk_at = x_bytes, weights_at = topk_at + 4096, out_at = weights_at + 4096;
  const size_t bytes = out_at + x_bytes;
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  void* device = nullptr;
  ASSERT_EQ(cudaMalloc(&device, bytes), cudaSuccess);
  std::vector<float> x(size_t{kTokens} * kHidden), weights(size_t{kTokens} * kTopK);
  std::vector<int32_t> topk(size_t{kTokens} * kTopK);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 977) * 0.25f;
  for (int t = 0; t < kTokens; ++t) {
    topk[t * kTopK] = t % kExperts;
    topk[t * kTopK + 1] = t % 3 == 0 ? -1 : (t + 3) % kExperts;
    weights[t * kTopK] = 0.75f;
    weights[t * kTopK + 1] = 0.5f;
  }
  char* base = static_cast<char*>(device);
  // Landed before the daemon reads them (common/cuda_copy.h).
  ASSERT_TRUE(cuda::CopyNow(base, x.data(), x_bytes).ok());
  ASSERT_TRUE(cuda::CopyNow(base + topk_at, topk.data(), k_bytes).ok());
  ASSERT_TRUE(cuda::CopyNow(base + weights_at, weights.data(), k_bytes).ok());
  auto source = cuda::ExportDeviceTensor(device, bytes);
  ASSERT_TRUE(source.ok()) << source.status().ToString();
  auto buffer = (*session)->RegisterBuffer(*source);
  ASSERT_TRUE(buffer.ok()) << buffer.status().ToString();
  auto go = (*session)->CreateFence();
  auto done = (*session)->CreateFence();
  ASSERT_TRUE(go.ok() && done.ok());

  // Post the whole layer ahead; nothing may run before the graph signals `go`.
  v1::UpdateHandleRequest update;
  update.set_handle_id(handle->handle_id());
  *update.mutable_topk_idx() = MakeTensorRef(*buffer, topk_at, v1::DTYPE_INT32, {kTokens, kTopK});
  *update.mutable_topk_weights() =
      MakeTensorRef(*buffer, weights_at, v1::DTYPE_FP32, {kTokens, kTopK});
  *update.mutable_options() = FencedOptions(go->get(), 1, done->get(), 1);
  v1::DispatchRequest dispatch;
  dispatch.set_handle_id(handle->handle_id());
  *dispatch.mutable_x() = MakeTensorRef(*buffer, 0, v1::DTYPE_FP32, {kTokens, kHidden});
  *dispatch.mutable_options() = FencedOptions(nullptr, 0, done->get(), 2);
  v1::CombineRequest combine;
  combine.set_handle_id(handle->handle_id());
  *combine.mutable_out() = MakeTensorRef(*buffer, out_at, v1::DTYPE_FP32, {kTokens, kHidden});
  *combine.mutable_options() = FencedOptions(nullptr, 0, done->get(), 3);
  std::future<Status> answers[3] = {(*session)->UpdateAsync(update),
                                    (*session)->DispatchAsync(dispatch),
                                    (*session)->CombineAsync(combine)};

  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  cudaGraph_t graph;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  Status signalled = cuda::SignalFenceOnStream(**go, 1, stream);
  Status waited = cuda::WaitFenceOnStream(**done, 3, stream);
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  ASSERT_TRUE(signalled.ok()) << signalled.ToString();
  ASSERT_TRUE(waited.ok()) << waited.ToString();
  cudaGraphExec_t exec;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
  cudaError_t state = cudaErrorNotReady;
  for (int i = 0; i < 2000 && state == cudaErrorNotReady; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    state = cudaStreamQuery(stream);
  }
  ASSERT_EQ(state, cudaSuccess) << "the graph's wait for done >= 3 never ended";
  for (auto& answer : answers) EXPECT_TRUE((*session)->Await(answer, "op").ok());

  // Identity experts: out[t] = sum over k ascending of w * x[t] in fp32 (no FMA).
  std::vector<float> out(x.size());
  ASSERT_EQ(cudaMemcpy(out.data(), base + out_at, x_bytes, cudaMemcpyDeviceToHost), cudaSuccess);
  for (int t = 0; t < kTokens; ++t) {
    for (int h = 0; h < kHidden; ++h) {
      const float v = x[static_cast<size_t>(t) * kHidden + h];
      volatile float first = 0.75f * v;
      volatile float acc = 0.0f + first;
      if (t % 3 != 0) {
        volatile float second = 0.5f * v;
        acc = acc + second;
      }
      ASSERT_EQ(out[static_cast<size_t>(t) * kHidden + h], acc) << "t " << t << " h " << h;
    }
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
  ASSERT_TRUE((*session)->Close().ok());
  cudaFree(device);
}

// SIGTERM while an op waits on the device (a fence nobody signals, op timeout far away): the
// drain gives up on it after drain_timeout, the abort word releases the device wait at once,
// and the daemon tears down and exits 0 promptly, without any forced exit.
TEST(DaemonShutdownTest, ExitsWithinTheDrainTimeoutWithADeviceWaitOutstanding) {
  if (VisibleGpus() == 0) GTEST_SKIP() << "no CUDA GPU: the daemon path needs the cuda backend";
  constexpr int kDrainMs = 1'000;
  auto daemon = DaemonProcess::Start({"--backend", "cuda", "--op-timeout-ms", "60000",
                                      "--drain-timeout-ms", std::to_string(kDrainMs)});
  ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
  auto client = ConnectOrDie((*daemon)->address());
  ASSERT_NE(client, nullptr);
  auto session = client->OpenSession(0, "stuck-frontend");
  ASSERT_TRUE(session.ok()) << session.status().ToString();
  v1::GroupConfig config;
  config.set_name("stuck");
  config.add_ranks(0);
  config.set_experts(2);
  config.set_hidden(64);
  config.set_max_tokens_per_rank(4);
  config.set_top_k(1);
  ASSERT_TRUE((*session)->CreateGroup(config).ok());
  auto handle = (*session)->CreateHandle("stuck");
  ASSERT_TRUE(handle.ok()) << handle.status().ToString();
  auto fence = (*session)->CreateFence();
  ASSERT_TRUE(fence.ok()) << fence.status().ToString();
  // Routing read from the handle's own (zeroed) exported region: expert 0 for every token.
  v1::UpdateHandleRequest update;
  update.set_handle_id(handle->handle_id());
  *update.mutable_topk_idx() = MakeTensorRef(handle->buffer_id(), 0, v1::DTYPE_INT32, {1, 1});
  *update.mutable_options() = FencedOptions(fence->get(), 1, nullptr, 0);
  update.mutable_options()->set_blocking(true);
  std::future<Status> stuck = (*session)->UpdateAsync(update);

  const auto start = std::chrono::steady_clock::now();
  const int code = (*daemon)->Stop();
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(code, 0) << (*daemon)->ReadLog();
  // drain_timeout, the server's grace and teardown; nowhere near the 60 s op timeout.
  EXPECT_LT(took, std::chrono::milliseconds(kDrainMs + 4'000)) << (*daemon)->ReadLog();
  EXPECT_FALSE((*session)->Await(stuck, "update").ok());
}

}  // namespace
}  // namespace epd::testing
