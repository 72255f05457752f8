// The data-path choice against the real daemon on the cpu backend: GetNodeInfo claims no MPS
// GPU, the client's default is the daemon's streams, and AttachDataPlane travels the wire and
// answers with the backend's reason (no device data plane) and the field errors of bad ids.
#include <gtest/gtest.h>

#include "client/epd/data_path.h"
#include "tests/integration/client_test_support.h"

namespace epd::testing {
namespace {

TEST(DataPathTest, TheCpuBackendServesTheDaemonStreamsOnly) {
  auto daemon = DaemonProcess::Start({}, 1);
  ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
  auto client = ConnectOrDie((*daemon)->address());
  ASSERT_NE(client, nullptr);
  auto node = client->GetNodeInfo();
  ASSERT_TRUE(node.ok()) << node.status().ToString();
  EXPECT_EQ(node->gpus_size(), 0);
  EXPECT_EQ(ChooseDataPath(*node, 0, /*client_has_cuda=*/true, std::nullopt).value(),
            DataPath::kDaemonStreams);
  EXPECT_EQ(ChooseDataPath(*node, 0, true, DataPath::kFrontendLaunched).status().code(),
            StatusCode::kFailedPrecondition);

  auto session = client->OpenSession(0, "data-path");
  ASSERT_TRUE(session.ok()) << session.status().ToString();
  v1::GroupConfig config;
  config.set_name("dp");
  config.set_world_size(1);
  config.set_experts(4);
  config.set_hidden(16);
  config.set_max_tokens_per_rank(8);
  config.set_top_k(2);
  ASSERT_TRUE((*session)->CreateGroup(config).ok());
  auto handle = (*session)->CreateHandle("dp");
  ASSERT_TRUE(handle.ok()) << handle.status().ToString();
  EXPECT_EPD_ERROR((*session)->AttachDataPlane(handle->handle_id()).status(),
                   StatusCode::kFailedPrecondition, "cpu backend has no device data plane");
  EXPECT_EPD_ERROR((*session)->AttachDataPlane(handle->handle_id() + 100).status(),
                   StatusCode::kNotFound, "is not a handle of this session");
  // The refused attach changed nothing: the daemon still runs the group's ops.
  auto shm = SharedMemoryBuffer::Create(4096);
  ASSERT_TRUE(shm.ok()) << shm.status().ToString();
  auto buffer = (*session)->RegisterBuffer((*shm)->Source());
  ASSERT_TRUE(buffer.ok()) << buffer.status().ToString();
  EXPECT_EPD_OK((*session)->Update(handle->handle_id(),
                                   MakeTensorRef(*buffer, 0, v1::DTYPE_INT32, {0, 2}),
                                   std::nullopt, BlockingOptions()));
  EXPECT_TRUE((*session)->Close().ok());
}

}  // namespace
}  // namespace epd::testing
