#include "tests/bench/rank_devices.h"

#include <gtest/gtest.h>

namespace epd::bench {
namespace {

TEST(RankDevicesTest, RankRRunsOnGpuRUnlessGpusAreNamed) {
  EXPECT_EQ(RankDevices({}, 1), (std::vector<int>{0}));
  EXPECT_EQ(RankDevices({}, 4), (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(RankDevices({0, 0}, 2), (std::vector<int>{0, 0}));
  EXPECT_EQ(RankDevices({1, 0}, 2), (std::vector<int>{1, 0}));
}

TEST(RankDevicesTest, RanksSharingAGpuSplitItsSms) {
  EXPECT_EQ(SharedGpuBlockBound({0, 1, 2, 3}, 132), 0);
  EXPECT_EQ(SharedGpuBlockBound({0}, 132), 0);
  EXPECT_EQ(SharedGpuBlockBound({0, 0}, 132), 66);
  EXPECT_EQ(SharedGpuBlockBound({0, 0, 0, 1}, 132), 44);  // the most shared GPU decides
  EXPECT_EQ(SharedGpuBlockBound({0, 0, 0}, 2), 1);
}

}  // namespace
}  // namespace epd::bench
