// CudaDaemonTest: the fixture of the GPU tests that drive frontend processes against a real
// `epd --backend cuda` (skipped without a GPU): the daemon, a client connected to it, the
// example frontend run as a child that must pass or is killed mid-run, and persistent groups
// that outlive the frontends.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <iterator>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "tests/gpu/frontend_processes.h"
#include "tests/integration/client_test_support.h"

namespace epd::testing {

class CudaDaemonTest : public ::testing::Test {
 protected:
  // From SetUp; `what` names what needs the cuda backend, for the skip message.
  void StartCudaDaemon(const std::string& what) {
    gpus_ = VisibleGpus();
    if (gpus_ == 0) GTEST_SKIP() << "no CUDA GPU: " << what << " needs the cuda backend";
    auto daemon = DaemonProcess::Start({"--backend", "cuda", "--op-timeout-ms", "5000"});
    ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
    daemon_ = std::move(daemon).value();
    client_ = ConnectOrDie(daemon_->address());
    ASSERT_NE(client_, nullptr);
    auto info = client_->GetNodeInfo();
    ASSERT_TRUE(info.ok()) << info.status().ToString();
    ASSERT_EQ(info->backend(), "cuda");
    ASSERT_EQ(info->gpus_size(), gpus_);
    node_ = *info;
  }

  // The example frontend's arguments: one rank per GPU, T 128, H 4104, 8 experts per rank,
  // top-4; `mode` is its --mode (frontend: the frontend-launched path; fenced: the daemon's
  // streams behind fences).
  std::vector<std::string> ExampleArgs(const std::string& layout, const std::string& dtype,
                                       int iterations, const std::string& group = "",
                                       const std::string& algorithm = "low_latency",
                                       const std::string& mode = "frontend") {
    std::vector<std::string> args = {ExampleFrontendPath(),
                                     "--address",
                                     daemon_->address(),
                                     "--ranks",
                                     std::to_string(gpus_),
                                     "--tokens",
                                     "128",
                                     "--hidden",
                                     "4104",
                                     "--experts",
                                     std::to_string(8 * gpus_),
                                     "--topk",
                                     "4",
                                     "--layout",
                                     layout,
                                     "--dtype",
                                     dtype,
                                     "--mode",
                                     mode,
                                     "--iterations",
                                     std::to_string(iterations),
                                     "--algorithm",
                                     algorithm};
    if (!group.empty()) {
      args.push_back("--group");
      args.push_back(group);
    }
    return args;
  }

  // A persistent group of the shape ExampleArgs runs (it outlives the frontends, as a
  // deployment's groups do), created through an owner session the caller closes; null (and a
  // failure recorded) when it could not be created.
  std::unique_ptr<Session> CreatePersistentGroup(
      const std::string& name, v1::DType dtype,
      v1::Algorithm algorithm = v1::ALGORITHM_UNSPECIFIED) {
    example::Problem problem;
    problem.ranks = gpus_;
    problem.experts = 8 * gpus_;
    problem.hidden = 4104;
    problem.max_tokens = 128;
    problem.top_k = 4;
    problem.dtype = dtype;
    problem.algorithm = algorithm;
    auto owner = client_->OpenSession(0, "group-owner");
    EXPECT_TRUE(owner.ok()) << owner.status().ToString();
    if (!owner.ok()) return nullptr;
    auto created = (*owner)->CreateGroup(problem.Config(name), /*persistent=*/true);
    EXPECT_TRUE(created.ok()) << created.status().ToString();
    return created.ok() ? std::move(owner).value() : nullptr;
  }

  // Lines of the daemon's log that contain `what`.
  size_t LogLinesWith(const std::string& what) const {
    const std::string log = daemon_->ReadLog();
    size_t count = 0;
    for (size_t at = log.find(what); at != std::string::npos; at = log.find(what, at + 1)) {
      ++count;
    }
    return count;
  }

  // Waits up to 60 s for `count` lines containing `what` in the daemon's log.
  bool WaitForLog(const std::string& what, size_t count) const {
    for (int i = 0; i < 1200; ++i) {
      if (LogLinesWith(what) >= count) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }

  // Kills the last rank's process of the running example frontend `example` (a process per
  // rank, its children) and waits up to `wait_ms` for the example to exit: its surviving ranks
  // must fail their pending op, not hang.
  void KillLastRankAndExpectTheExampleToFail(ChildProcess& example, int wait_ms) {
    std::vector<pid_t> ranks = ChildrenOf(example.pid());
    ASSERT_EQ(static_cast<int>(ranks.size()), gpus_);
    ASSERT_EQ(kill(ranks.back(), SIGKILL), 0);
    const int code = example.Wait(wait_ms);
    EXPECT_NE(code, 0);
    EXPECT_NE(code, -1) << "the surviving frontends hung";
  }

  // Runs `args` (with --progress) and kills one rank's process once 3 layers per rank passed;
  // the survivors must fail their pending op, not hang. Returns once the daemon closed the
  // killed frontend's sessions and, on the frontend-launched path, reset the group.
  void KillOneRankMidRun(std::vector<std::string> args) {
    constexpr const char* kReset = "device sync state reset";
    const size_t resets = LogLinesWith(kReset);
    auto sessions = client_->GetStats();
    ASSERT_TRUE(sessions.ok()) << sessions.status().ToString();
    const uint64_t sessions_before = sessions->sessions_open();
    const auto mode = std::find(args.begin(), args.end(), "--mode");
    const bool frontend_launched =
        mode != args.end() && std::next(mode) != args.end() && *std::next(mode) == "frontend";
    args.push_back("--progress");
    auto victim = ChildProcess::Spawn(args);
    ASSERT_TRUE(victim.ok()) << victim.status().ToString();
    int layers = 0;
    while (layers < 3 * gpus_) {
      auto line = (*victim)->ReadLine(60'000);
      ASSERT_TRUE(line.ok()) << line.status().ToString() << "; daemon log:\n" << daemon_->ReadLog();
      if (line->find("OK") != std::string::npos) ++layers;
    }
    // Survivors (more than one GPU) fail their pending op within the op timeout (5 s).
    ASSERT_NO_FATAL_FAILURE(KillLastRankAndExpectTheExampleToFail(**victim, 60'000));
    if (frontend_launched) {
      ASSERT_TRUE(WaitForLog(kReset, resets + 1)) << daemon_->ReadLog();
    }
    // A session whose op was waiting for the killed frontend's fence closes once the op ends
    // (at the latest at the op timeout).
    bool closed = false;
    for (int i = 0; i < 400 && !closed; ++i) {
      auto stats = client_->GetStats();
      closed = stats.ok() && stats->sessions_open() == sessions_before;
      if (!closed) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ASSERT_TRUE(closed) << "the killed frontend's sessions stayed open; daemon log:\n"
                        << daemon_->ReadLog();
  }

  // Runs the example frontend with `args` (ExampleFrontendPath() first) and expects it to
  // exit 0 within two minutes; a failure names `what` and shows the daemon's log.
  void ExpectExamplePasses(const std::vector<std::string>& args, const std::string& what) {
    auto example = ChildProcess::Spawn(args);
    ASSERT_TRUE(example.ok()) << what << ": " << example.status().ToString();
    EXPECT_EQ((*example)->Wait(120'000), 0) << what << "; daemon log:\n" << daemon_->ReadLog();
  }

  // The daemon ran no dispatch or combine on its own streams: the frontends launched them.
  void ExpectNoDaemonOps() {
    auto stats = client_->GetStats();
    ASSERT_TRUE(stats.ok()) << stats.status().ToString();
    EXPECT_EQ(stats->dispatch().completed() + stats->dispatch().failed(), 0u);
    EXPECT_EQ(stats->combine().completed() + stats->combine().failed(), 0u);
  }

  int gpus_ = 0;
  v1::NodeInfo node_;
  std::unique_ptr<DaemonProcess> daemon_;
  std::unique_ptr<Client> client_;
};

}  // namespace epd::testing
