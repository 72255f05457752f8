// The one translation of device error records into a Status, shared by the daemon's streams
// (daemon/backends/cuda/error_records.cc) and frontend-launched ops (client FrontendOps): a
// high-throughput row overflow and a bad expert id read the same on both paths. Host code
// only: runs without a GPU.
#include "kernels/device_error_status.h"

#include <gtest/gtest.h>

namespace epd::kernels {
namespace {

TEST(DeviceErrorStatusTest, RowCapacityOverflowIsResourceExhaustedNamingRecvCapacity) {
  DeviceError record{};
  record.code = kDeviceErrorRowCapacity;
  record.a = 1;   // the group rank that would receive too much
  record.b = 40;  // its rows
  record.c = 16;  // recv_capacity
  const Status status = DeviceErrorToStatus(record, DescribeGroupOp("dispatch", "ht", 0, 7));
  EXPECT_EQ(status.code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(status.message(),
            "dispatch of group 'ht' on rank 0 (op 7): group rank 1 would receive 40 rows, more "
            "than recv_capacity=16");
}

TEST(DeviceErrorStatusTest, BadExpertIdIsInvalidArgumentNamingTheSelection) {
  DeviceError record{};
  record.code = kDeviceErrorBadExpertId;
  record.a = 3;
  record.b = 1;
  record.c = 64;
  record.value = 99;
  const Status status = DeviceErrorToStatus(record, DescribeGroupOp("update", "ht", 1, 0));
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(),
            "update of group 'ht' on rank 1 (op 0): topk_idx[3, 1] = 99 is outside [-1, 64)");
}

TEST(DeviceErrorStatusTest, NoRecordIsOk) {
  EXPECT_TRUE(DeviceErrorToStatus(DeviceError{}, DescribeGroupOp("combine", "g", 0, 1)).ok());
}

}  // namespace
}  // namespace epd::kernels
