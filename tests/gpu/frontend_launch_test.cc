// The frontend-launched data path on GPUs: the real `epd --backend cuda` owns groups and
// handles; frontend processes launch epd's kernels themselves (FrontendOps) on their own
// streams against the daemon's memory. Bit-exact against the cpu reference math, CUDA graphs
// of a whole layer replayed with new inputs (also with two ranks sharing GPU 0), and a
// frontend killed while its ops run: the daemon resets the group and a new frontend runs
// bit-exact layers on it. Each also with algorithm = high_throughput (packed rows, the SM
// budget as grid bound).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include "client/epd/data_path.h"
#include "client/epd/frontend_ops.h"
#include "tests/gpu/cuda_daemon_fixture.h"

namespace epd::testing {
namespace {

class FrontendLaunchTest : public CudaDaemonTest {
 protected:
  void SetUp() override {
    StartCudaDaemon("the frontend-launched path");
    if (IsSkipped() || HasFatalFailure()) return;
    // MPS is what the node runs; the daemon reports it (and this path works either way).
    std::printf("GPU 0: MPS %s, compute mode %d\n", node_.gpus(0).mps_active() ? "on" : "off",
                static_cast<int>(node_.gpus(0).compute_mode()));
  }
};

TEST_F(FrontendLaunchTest, FrontendProcessesGetBitExactResultsWithoutTheDaemonsStreams) {
  for (const std::string layout : {"expert_major", "rank_major"}) {
    for (const std::string dtype : {"bf16", "fp16", "fp32"}) {
      ExpectExamplePasses(ExampleArgs(layout, dtype, 6), layout + " " + dtype);
    }
  }
  // The daemon ran none of the ops: the frontends launched them.
  ExpectNoDaemonOps();
}

// T past the point from which the routing bind runs chunked (kernels/routing_scratch.h): the frontends' updates
// of many tokens run the bind's three launches on the scratch the daemon exports in the
// private region, eagerly and captured in graphs, bit-exact.
TEST_F(FrontendLaunchTest, LargeUpdatesBindChunkedOnTheExportedScratch) {
  for (const bool graphs : {false, true}) {
    std::vector<std::string> args = ExampleArgs("rank_major", "bf16", 4);
    for (size_t i = 0; i + 1 < args.size(); ++i) {
      if (args[i] == "--tokens") args[i + 1] = "2100";  // past kRoutingChunkedFasterFromTokens
      if (args[i] == "--hidden") args[i + 1] = "1024";
    }
    if (graphs) args.push_back("--graphs");
    ExpectExamplePasses(args, graphs ? "graphs" : "eager");
  }
}

// A layer captured once in CUDA graphs (update + dispatch, combine) after an eager layer and
// replayed for every later layer with new inputs written in place: op sequence numbers live
// on the device, so each replay gets fresh ones, and every layer is bit-exact against the
// reference math (the example checks each one and fails unless layers 2..N replayed).
TEST_F(FrontendLaunchTest, CapturedLayersReplayBitExactWithNewInputs) {
  for (const std::string layout : {"expert_major", "rank_major"}) {
    std::vector<std::string> args = ExampleArgs(layout, "bf16", 5, "graph-" + layout);
    args.push_back("--graphs");
    ExpectExamplePasses(args, layout);
  }
  ExpectNoDaemonOps();
}

// Frontends of one persistent group come and go, with and without graphs: each new set
// starts a new epoch (the daemon resets the group when a frontend ends), whose base is the
// floor of the device-numbered ops, whatever the ranks' counters reached before.
TEST_F(FrontendLaunchTest, GraphAndEagerFrontendsTakeTurnsOnOnePersistentGroup) {
  const std::string group = "graph-turns";
  std::unique_ptr<Session> owner = CreatePersistentGroup(group, v1::DTYPE_FP32);
  ASSERT_NE(owner, nullptr);
  for (const bool graphs : {true, false, true}) {
    std::vector<std::string> args = ExampleArgs("expert_major", "fp32", 5, group);
    if (graphs) args.push_back("--graphs");
    ExpectExamplePasses(args, graphs ? "graphs" : "eager");
  }
  EXPECT_TRUE(owner->Close().ok());
}

TEST_F(FrontendLaunchTest, AKilledFrontendResetsTheGroupAndANewFrontendRunsBitExact) {
  const std::string group = "frontend-reset";
  std::unique_ptr<Session> owner = CreatePersistentGroup(group, v1::DTYPE_BF16);
  ASSERT_NE(owner, nullptr);

  // The frontends run checked layers back to back: kill one while the loop runs.
  ASSERT_NO_FATAL_FAILURE(KillOneRankMidRun(ExampleArgs("expert_major", "bf16", 100000, group)));
  // A new set of frontends runs bit-exact layers on the same group, in the new epoch.
  ExpectExamplePasses(ExampleArgs("expert_major", "bf16", 4, group), "after the reset");
  EXPECT_TRUE(owner->Close().ok());
}

// High-throughput groups on the same path: every dtype bit-exact, layers of varying token
// counts (T, then random in [1, T]), the daemon running none of the ops.
TEST_F(FrontendLaunchTest, HighThroughputFrontendsGetBitExactResults) {
  for (const std::string dtype : {"bf16", "fp16", "fp32"}) {
    ExpectExamplePasses(ExampleArgs("expert_major", dtype, 6, "", "high_throughput"), dtype);
  }
  ExpectNoDaemonOps();
}

// A high-throughput layer captured in CUDA graphs after an eager layer and replayed 4 times,
// each with new tokens and new routing written into the captured tensors; every layer is
// checked bit for bit (the example fails unless layers 2..5 replayed). Also past the chunked
// routing bind's threshold, on the exported scratch.
TEST_F(FrontendLaunchTest, HighThroughputCapturedLayersReplayBitExactWithNewRouting) {
  for (const int tokens : {128, 1100}) {
    std::vector<std::string> args =
        ExampleArgs("expert_major", "bf16", 6, "ht-graph-" + std::to_string(tokens),
                    "high_throughput");
    for (size_t i = 0; i + 1 < args.size(); ++i) {
      if (args[i] == "--tokens") args[i + 1] = std::to_string(tokens);
      if (args[i] == "--hidden" && tokens > 128) args[i + 1] = "1024";
    }
    args.push_back("--graphs");
    ExpectExamplePasses(args, std::to_string(tokens) + " tokens");
  }
  ExpectNoDaemonOps();
}

// A frontend of a persistent high-throughput group killed while its layers run: the daemon
// resets the group (its sync areas and epoch), and a new set of frontends, eager and then
// with graphs, runs bit-exact layers on it.
TEST_F(FrontendLaunchTest, AKilledHighThroughputFrontendResetsTheGroupAndTheNextRunsBitExact) {
  const std::string group = "ht-frontend-reset";
  std::unique_ptr<Session> owner =
      CreatePersistentGroup(group, v1::DTYPE_BF16, v1::ALGORITHM_HIGH_THROUGHPUT);
  ASSERT_NE(owner, nullptr);

  ASSERT_NO_FATAL_FAILURE(
      KillOneRankMidRun(ExampleArgs("expert_major", "bf16", 100000, group, "high_throughput")));
  for (const bool graphs : {false, true}) {
    std::vector<std::string> again_args =
        ExampleArgs("expert_major", "bf16", 4, group, "high_throughput");
    if (graphs) again_args.push_back("--graphs");
    ExpectExamplePasses(again_args, graphs ? "graphs" : "eager");
  }
  EXPECT_TRUE(owner->Close().ok());
}

// Two ranks on two GPUs, one frontend process each: the ranks' captured layers replay
// together, each replay numbered afresh on both ranks. (The daemon gives every rank its own
// GPU, so this needs two.)
TEST(FrontendLaunchTwoGpuTest, TwoRanksReplayCapturedLayersBitExact) {
  if (VisibleGpus() < 2) GTEST_SKIP() << "needs 2 GPUs (one per rank), found " << VisibleGpus();
  auto daemon =
      DaemonProcess::Start({"--backend", "cuda", "--gpus", "0,1", "--op-timeout-ms", "5000"});
  ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
  // High-throughput: packed rows from both ranks on each (layout unused).
  for (const std::string layout : {"expert_major", "rank_major", "high_throughput"}) {
    const bool ht = layout == "high_throughput";
    auto example = ChildProcess::Spawn(
        {ExampleFrontendPath(), "--address", (*daemon)->address(), "--ranks", "2", "--tokens",
         "64", "--hidden", "2048", "--experts", "16", "--topk", "4", "--layout",
         ht ? "expert_major" : layout, "--algorithm", ht ? "high_throughput" : "low_latency",
         "--dtype", "bf16", "--mode", "frontend", "--iterations", "5", "--graphs"});
    ASSERT_TRUE(example.ok()) << example.status().ToString();
    EXPECT_EQ((*example)->Wait(180'000), 0) << layout << "; daemon log:\n" << (*daemon)->ReadLog();
  }
}

}  // namespace
}  // namespace epd::testing
