// The client's choice of data path per handle: the default from what the daemon reports, an
// explicit request, and what the frontend-launched path needs.
#include "client/epd/data_path.h"

#include <gtest/gtest.h>
#include <stdlib.h>

namespace epd {
namespace {

v1::NodeInfo Node(const std::string& backend, bool mps) {
  v1::NodeInfo node;
  node.set_backend(backend);
  if (backend == "cuda") {
    for (int i = 0; i < 2; ++i) {
      v1::GpuInfo* gpu = node.add_gpus();
      gpu->set_index(i);
      gpu->set_mps_active(mps);
    }
  }
  return node;
}

TEST(ClientDataPathTest, DefaultFollowsTheDaemonsMpsState) {
  EXPECT_EQ(ChooseDataPath(Node("cuda", false), 1, true, std::nullopt).value(),
            DataPath::kFrontendLaunched);
  EXPECT_EQ(ChooseDataPath(Node("cuda", true), 1, true, std::nullopt).value(),
            DataPath::kDaemonStreams);
  // Without CUDA in the client, or on the cpu backend, only the daemon's streams exist.
  EXPECT_EQ(ChooseDataPath(Node("cuda", false), 1, false, std::nullopt).value(),
            DataPath::kDaemonStreams);
  EXPECT_EQ(ChooseDataPath(Node("cpu", false), 0, true, std::nullopt).value(),
            DataPath::kDaemonStreams);
}

TEST(ClientDataPathTest, ARequestWinsWhereItCanBeServed) {
  EXPECT_EQ(ChooseDataPath(Node("cuda", false), 0, true, DataPath::kDaemonStreams).value(),
            DataPath::kDaemonStreams);
  EXPECT_EQ(ChooseDataPath(Node("cuda", true), 0, true, DataPath::kFrontendLaunched).value(),
            DataPath::kFrontendLaunched);
  auto no_cuda = ChooseDataPath(Node("cuda", true), 0, false, DataPath::kFrontendLaunched);
  EXPECT_EQ(no_cuda.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(no_cuda.status().message().find("built with CUDA"), std::string::npos);
  auto cpu = ChooseDataPath(Node("cpu", false), 0, true, DataPath::kFrontendLaunched);
  EXPECT_EQ(cpu.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(cpu.status().message().find("backend 'cpu'"), std::string::npos);
  auto no_gpu = ChooseDataPath(Node("cuda", false), 5, true, DataPath::kFrontendLaunched);
  EXPECT_EQ(no_gpu.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(no_gpu.status().message().find("node rank 5"), std::string::npos);
}

TEST(ClientDataPathTest, NamesParseAndBadOnesNameTheSource) {
  EXPECT_EQ(ParseDataPath("frontend", "x").value(), DataPath::kFrontendLaunched);
  EXPECT_EQ(ParseDataPath("frontend-launched", "x").value(), DataPath::kFrontendLaunched);
  EXPECT_EQ(ParseDataPath("daemon", "x").value(), DataPath::kDaemonStreams);
  EXPECT_EQ(ParseDataPath("daemon-streams", "x").value(), DataPath::kDaemonStreams);
  auto bad = ParseDataPath("gpu", "EPD_DATA_PATH");
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("EPD_DATA_PATH = 'gpu'"), std::string::npos);
  EXPECT_EQ(DataPathName(DataPath::kFrontendLaunched), "frontend-launched");
}

TEST(ClientDataPathTest, TheEnvironmentChoosesWhenSet) {
  unsetenv("EPD_DATA_PATH");
  EXPECT_FALSE(DataPathFromEnvironment().value().has_value());
  setenv("EPD_DATA_PATH", "daemon", 1);
  EXPECT_EQ(DataPathFromEnvironment().value(), DataPath::kDaemonStreams);
  setenv("EPD_DATA_PATH", "sideways", 1);
  EXPECT_EQ(DataPathFromEnvironment().status().code(), StatusCode::kInvalidArgument);
  unsetenv("EPD_DATA_PATH");
}

}  // namespace
}  // namespace epd
