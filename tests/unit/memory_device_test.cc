// Which GPU of the daemon holds registered memory: by UUID when the frontend names one (its
// device index may mean another GPU in its own numbering), else by index.
#include "daemon/backends/cuda/memory_device.h"

#include <gtest/gtest.h>

namespace epd::cuda {
namespace {

const std::vector<std::string> kGpus = {"GPU-00000000-0000-0000-0000-0000000000aa",
                                        "GPU-00000000-0000-0000-0000-0000000000bb"};

MemorySource Source(int device, std::string uuid) {
  MemorySource source;
  source.kind = MemorySource::Kind::kCudaIpc;
  source.device = device;
  source.device_uuid = std::move(uuid);
  return source;
}

TEST(SourceDeviceTest, TheUuidDecidesOverTheFrontendsIndex) {
  // A frontend that sees only the daemon's second GPU calls it device 0.
  EXPECT_EQ(SourceDevice(Source(0, kGpus[1]), kGpus).value(), 1);
  EXPECT_EQ(SourceDevice(Source(1, kGpus[0]), kGpus).value(), 0);
}

TEST(SourceDeviceTest, WithoutAUuidTheIndexIsTheNodeRank) {
  EXPECT_EQ(SourceDevice(Source(1, ""), kGpus).value(), 1);
  EXPECT_EQ(SourceDevice(Source(-1, ""), kGpus).value(), -1);
}

TEST(SourceDeviceTest, AUuidOfNoGpuOfThisDaemonIsRefusedNamingItAndTheDaemonsGpus) {
  const StatusOr<int> device =
      SourceDevice(Source(0, "GPU-00000000-0000-0000-0000-0000000000cc"), kGpus);
  ASSERT_FALSE(device.ok());
  EXPECT_EQ(device.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(device.status().message().find("device_uuid 'GPU-00000000-0000-0000-0000-0000000000cc'"),
            std::string::npos)
      << device.status().ToString();
  EXPECT_NE(device.status().message().find(kGpus[0] + ", " + kGpus[1]), std::string::npos)
      << device.status().ToString();
}

}  // namespace
}  // namespace epd::cuda
