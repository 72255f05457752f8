// The frontend-launched data path on GPUs: the real `epd --backend cuda` owns groups and
// handles; frontend processes launch epd's kernels themselves (FrontendOps) on their own
// streams against the daemon's memory. Bit-exact against the cpu reference math, a CUDA graph
// of a whole layer replayed with new routing, and a frontend killed while its ops run: the
// daemon resets the group and a new frontend runs bit-exact layers on it.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <thread>

#include "client/epd/data_path.h"
#include "client/epd/frontend_ops.h"
#include "tests/gpu/frontend_processes.h"
#include "tests/integration/client_test_support.h"

namespace epd::testing {
namespace {

size_t Occurrences(const std::string& text, const std::string& what) {
  size_t count = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++count;
  return count;
}

class FrontendLaunchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    gpus_ = VisibleGpus();
    if (gpus_ == 0) GTEST_SKIP() << "no CUDA GPU: the frontend-launched path needs the cuda backend";
    auto daemon = DaemonProcess::Start({"--backend", "cuda", "--op-timeout-ms", "5000"});
    ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
    daemon_ = std::move(daemon).value();
    client_ = ConnectOrDie(daemon_->address());
    ASSERT_NE(client_, nullptr);
    auto info = client_->GetNodeInfo();
    ASSERT_TRUE(info.ok()) << info.status().ToString();
    ASSERT_EQ(info->backend(), "cuda");
    ASSERT_EQ(info->gpus_size(), gpus_);
    // MPS is what the node runs; the daemon reports it (and this path works either way).
    std::printf("GPU 0: MPS %s, compute mode %d\n", info->gpus(0).mps_active() ? "on" : "off",
                static_cast<int>(info->gpus(0).compute_mode()));
  }

  std::vector<std::string> ExampleArgs(const std::string& layout, const std::string& dtype,
                                       int iterations, const std::string& group = "") {
    std::vector<std::string> args = {
        ExampleFrontendPath(), "--address", daemon_->address(), "--ranks", std::to_string(gpus_),
        "--tokens", "128", "--hidden", "4104", "--experts", std::to_string(8 * gpus_), "--topk",
        "4", "--layout", layout, "--dtype", dtype, "--mode", "frontend", "--iterations",
        std::to_string(iterations)};
    if (!group.empty()) {
      args.push_back("--group");
      args.push_back(group);
    }
    return args;
  }

  // Waits up to 60 s for `count` lines containing `what` in the daemon's log.
  bool WaitForLog(const std::string& what, size_t count) {
    for (int i = 0; i < 1200; ++i) {
      if (Occurrences(daemon_->ReadLog(), what) >= count) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }

  int gpus_ = 0;
  std::unique_ptr<DaemonProcess> daemon_;
  std::unique_ptr<Client> client_;
};

TEST_F(FrontendLaunchTest, FrontendProcessesGetBitExactResultsWithoutTheDaemonsStreams) {
  for (const std::string layout : {"expert_major", "rank_major"}) {
    for (const std::string dtype : {"bf16", "fp16", "fp32"}) {
      auto example = ChildProcess::Spawn(ExampleArgs(layout, dtype, 6));
      ASSERT_TRUE(example.ok()) << example.status().ToString();
      EXPECT_EQ((*example)->Wait(120'000), 0)
          << layout << " " << dtype << "; daemon log:\n" << daemon_->ReadLog();
    }
  }
  // The daemon ran none of the ops: the frontends launched them.
  auto stats = client_->GetStats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->dispatch().completed() + stats->dispatch().failed(), 0u);
  EXPECT_EQ(stats->combine().completed() + stats->combine().failed(), 0u);
}

// Capturing frontend-launched ops in a CUDA graph is refused: a replay would reuse the captured
// op sequence numbers, so flags of the previous replay would satisfy its waits (a one-rank
// layer replayed with new routing read stale offsets on its second replay). The refusal names
// the group and the way that works (the daemon-stream path's fence ops capture fine).
TEST_F(FrontendLaunchTest, CaptureIsRefusedRatherThanReplayedWithStaleSequenceNumbers) {
  constexpr int kTokens = 32, kHidden = 1024, kTopK = 2, kExperts = 8;
  auto session = client_->OpenSession(0, "graph-frontend");
  ASSERT_TRUE(session.ok()) << session.status().ToString();
  ASSERT_TRUE(
      (*session)->CreateGroup(OneGpuFp32Group("frontend-graph", kTokens, kHidden, kTopK, kExperts)).ok());
  auto handle = (*session)->CreateHandle("frontend-graph");
  ASSERT_TRUE(handle.ok()) << handle.status().ToString();
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  auto view = HandleView::Open(*handle);
  ASSERT_TRUE(view.ok()) << view.status().ToString();
  auto plane = (*session)->AttachDataPlane(handle->handle_id());
  ASSERT_TRUE(plane.ok()) << plane.status().ToString();
  auto ops = FrontendOps::Open(*plane, **view);
  ASSERT_TRUE(ops.ok()) << ops.status().ToString();

  const size_t x_bytes = size_t{kTokens} * kHidden * 4;
  const size_t topk_at = x_bytes, weights_at = topk_at + 4096, out_at = weights_at + 4096;
  void* device = nullptr;
  ASSERT_EQ(cudaMalloc(&device, out_at + x_bytes), cudaSuccess);
  char* base = static_cast<char*>(device);
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  Status updated = (*ops)->Update(base + topk_at, false,
                                  reinterpret_cast<const float*>(base + weights_at), kTokens, stream);
  Status dispatched = (*ops)->Dispatch(base, stream);
  Status combined = (*ops)->Combine(base + out_at, stream);
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  EXPECT_TRUE(updated.ok()) << updated.ToString();  // routing binds carry no op sequence number
  for (const Status& refused : {dispatched, combined}) {
    EXPECT_EQ(refused.code(), StatusCode::kFailedPrecondition) << refused.ToString();
    EXPECT_NE(refused.message().find("cannot be captured in a CUDA graph"), std::string::npos)
        << refused.ToString();
  }
  if (graph != nullptr) cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
  ops->reset();
  view->reset();
  ASSERT_TRUE((*session)->Close().ok());
  cudaFree(device);
}

TEST_F(FrontendLaunchTest, AKilledFrontendResetsTheGroupAndANewFrontendRunsBitExact) {
  // The group outlives the frontends (persistent), as a deployment's groups do.
  example::Problem problem;
  problem.ranks = gpus_;
  problem.experts = 8 * gpus_;
  problem.hidden = 4104;
  problem.max_tokens = 128;
  problem.top_k = 4;
  problem.dtype = v1::DTYPE_BF16;
  const std::string group = "frontend-reset";
  auto owner = client_->OpenSession(0, "group-owner");
  ASSERT_TRUE(owner.ok());
  ASSERT_TRUE((*owner)->CreateGroup(problem.Config(group), /*persistent=*/true).ok());

  std::vector<std::string> args = ExampleArgs("expert_major", "bf16", 100000, group);
  args.push_back("--progress");
  auto victim = ChildProcess::Spawn(args);
  ASSERT_TRUE(victim.ok()) << victim.status().ToString();
  // The frontends run checked layers back to back: kill one while the loop runs.
  int layers = 0;
  while (layers < 3 * gpus_) {
    auto line = (*victim)->ReadLine(60'000);
    ASSERT_TRUE(line.ok()) << line.status().ToString() << "; daemon log:\n" << daemon_->ReadLog();
    if (line->find("OK") != std::string::npos) ++layers;
  }
  std::vector<pid_t> ranks = ChildrenOf((*victim)->pid());
  ASSERT_EQ(static_cast<int>(ranks.size()), gpus_);
  ASSERT_EQ(kill(ranks.back(), SIGKILL), 0);
  // Survivors (more than one GPU) fail their pending op within the op timeout (5 s), so the
  // example exits; it must not hang.
  const int code = (*victim)->Wait(60'000);
  EXPECT_NE(code, 0);
  EXPECT_NE(code, -1) << "the surviving frontends hung";
  ASSERT_TRUE(WaitForLog("device sync state reset", 1)) << daemon_->ReadLog();

  // A new set of frontends runs bit-exact layers on the same group, in the new epoch.
  auto again = ChildProcess::Spawn(ExampleArgs("expert_major", "bf16", 4, group));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)->Wait(120'000), 0) << daemon_->ReadLog();
  EXPECT_TRUE((*owner)->Close().ok());
}

}  // namespace
}  // namespace epd::testing
