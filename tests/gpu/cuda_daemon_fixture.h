// CudaDaemonTest: the fixture of the GPU tests that drive frontend processes against a real
// `epd --backend cuda` (skipped without a GPU): the daemon, a client connected to it, and the
// example frontend run as a child that must pass.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>
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
