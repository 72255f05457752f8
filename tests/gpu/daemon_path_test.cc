// The full daemon path on GPUs: the real `epd --backend cuda` serving R separate frontend
// processes (the example frontend) that register device tensors through CUDA IPC, map the
// handle's exported receive region, and order ops with fences on their own streams. Also a
// frontend killed while its rank's op is pending: the other ranks get a clear error, the
// daemon frees what the dead session held and keeps serving.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

#include "tests/integration/client_test_support.h"

namespace epd::testing {
namespace {

int VisibleGpus() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

// Children of `pid` (the example forks one process per rank).
std::vector<pid_t> ChildrenOf(pid_t pid) {
  std::ifstream file("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) +
                     "/children");
  std::vector<pid_t> children;
  pid_t child;
  while (file >> child) children.push_back(child);
  return children;
}

class DaemonPathTest : public ::testing::Test {
 protected:
  void SetUp() override {
    gpus_ = VisibleGpus();
    if (gpus_ == 0) GTEST_SKIP() << "no CUDA GPU: the daemon path needs the cuda backend";
    auto daemon = DaemonProcess::Start({"--backend", "cuda", "--op-timeout-ms", "5000"});
    ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
    daemon_ = std::move(daemon).value();
    client_ = ConnectOrDie(daemon_->address());
    ASSERT_NE(client_, nullptr);
    auto info = client_->GetNodeInfo();
    ASSERT_TRUE(info.ok()) << info.status().ToString();
    ASSERT_EQ(info->backend(), "cuda");
    ASSERT_EQ(info->ranks(), gpus_);
  }

  std::vector<std::string> ExampleArgs(const std::string& layout, const std::string& dtype,
                                       const std::string& mode, int iterations, int hidden) {
    return {ExampleFrontendPath(), "--address", daemon_->address(),  "--ranks",
            std::to_string(gpus_), "--tokens",  "128",                "--hidden",
            std::to_string(hidden), "--experts", std::to_string(8 * gpus_), "--topk", "4",
            "--layout", layout, "--dtype", dtype, "--mode", mode, "--iterations",
            std::to_string(iterations)};
  }

  int gpus_ = 0;
  std::unique_ptr<DaemonProcess> daemon_;
  std::unique_ptr<Client> client_;
};

TEST_F(DaemonPathTest, FrontendProcessesGetBitExactResultsThroughIpcAndFences) {
  const int64_t baseline = client_->GetStats()->live_bytes();
  for (const std::string layout : {"expert_major", "rank_major"}) {
    for (const std::string dtype : {"bf16", "fp16", "fp32"}) {
      auto example = ChildProcess::Spawn(ExampleArgs(layout, dtype, "both", 6, 4104));
      ASSERT_TRUE(example.ok()) << example.status().ToString();
      EXPECT_EQ((*example)->Wait(120'000), 0)
          << layout << " " << dtype << "; daemon log:\n" << daemon_->ReadLog();
    }
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
  std::vector<pid_t> ranks = ChildrenOf((*example)->pid());
  ASSERT_EQ(static_cast<int>(ranks.size()), gpus_);
  ASSERT_EQ(kill(ranks.back(), SIGKILL), 0);
  // The surviving ranks fail (no hang) well within the op timeout, so the example exits.
  const int code = (*example)->Wait(30'000);
  EXPECT_NE(code, 0);
  EXPECT_NE(code, -1) << "the surviving frontends hung";
  // Everything the sessions created is released once they are gone: ops still in flight for
  // the dead rank end within the op timeout (5 s here) and drop their references.
  for (int i = 0; i < 300 && client_->GetStats()->live_bytes() != baseline; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  auto groups = client_->ListGroups();
  EXPECT_EQ(client_->GetStats()->live_bytes(), baseline)
      << (groups.ok() ? groups->size() : 0) << " groups left; daemon log:\n" << daemon_->ReadLog();
  // The daemon keeps serving: a fresh set of frontends runs clean.
  auto again = ChildProcess::Spawn(ExampleArgs("expert_major", "bf16", "both", 4, 7168));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)->Wait(120'000), 0) << daemon_->ReadLog();
}

}  // namespace
}  // namespace epd::testing
