#include <gtest/gtest.h>
#include <sys/mman.h>

#include <cstring>

#include "client/epd/mapped_region.h"
#include "client/epd/shared_memory.h"

namespace epd {
namespace {

TEST(ClientSharedMemoryTest, CreateMapsZeroedMemoryAndUnlinksOnDestruction) {
  std::string name;
  {
    auto shm = SharedMemoryBuffer::Create(10'000);
    ASSERT_TRUE(shm.ok()) << shm.status().ToString();
    name = (*shm)->name();
    EXPECT_EQ(name[0], '/');
    EXPECT_EQ((*shm)->size(), 10'000u);
    EXPECT_TRUE((*shm)->owner());
    EXPECT_FALSE((*shm)->on_device());
    const auto* bytes = (*shm)->at<uint8_t>(0);
    for (size_t i = 0; i < 10'000; ++i) ASSERT_EQ(bytes[i], 0) << i;
  }
  EXPECT_EQ(SharedMemoryBuffer::Open(name, 0, 1).status().code(), StatusCode::kNotFound);
}

TEST(ClientSharedMemoryTest, OpenSeesTheSameBytesAtAnUnalignedOffset) {
  auto owner = SharedMemoryBuffer::Create(3 * 4096);
  ASSERT_TRUE(owner.ok());
  std::memcpy((*owner)->at<char>(5000), "epd!", 4);
  auto view = SharedMemoryBuffer::Open((*owner)->name(), 5000, 100);
  ASSERT_TRUE(view.ok()) << view.status().ToString();
  EXPECT_EQ(std::memcmp((*view)->data(), "epd!", 4), 0);
  EXPECT_FALSE((*view)->owner());
  std::memcpy((*view)->at<char>(4), "ok", 2);
  EXPECT_EQ(std::memcmp((*owner)->at<char>(5004), "ok", 2), 0);
  EXPECT_EQ((*view)->Unlink().code(), StatusCode::kFailedPrecondition);
}

TEST(ClientSharedMemoryTest, OpenOutsideTheObjectNamesTheRange) {
  auto owner = SharedMemoryBuffer::Create(4096);
  ASSERT_TRUE(owner.ok());
  const Status status = SharedMemoryBuffer::Open((*owner)->name(), 4000, 200).status();
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("[4000, 4200)"), std::string::npos) << status.ToString();
}

TEST(ClientSharedMemoryTest, CreateRefusesBadNamesAndDuplicates) {
  EXPECT_EQ(SharedMemoryBuffer::Create(64, "no-slash").status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(SharedMemoryBuffer::Create(0).status().code(), StatusCode::kInvalidArgument);
  auto first = SharedMemoryBuffer::Create(64);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(SharedMemoryBuffer::Create(64, (*first)->name()).status().code(),
            StatusCode::kAlreadyExists);
}

TEST(ClientSharedMemoryTest, SourceDescribesARange) {
  auto shm = SharedMemoryBuffer::Create(8192);
  ASSERT_TRUE(shm.ok());
  const v1::MemorySource all = (*shm)->Source();
  EXPECT_EQ(all.shm_name(), (*shm)->name());
  EXPECT_EQ(all.device(), -1);
  EXPECT_EQ(all.offset(), 0u);
  EXPECT_EQ(all.size(), 8192u);
  const v1::MemorySource tail = (*shm)->Source(4096);
  EXPECT_EQ(tail.offset(), 4096u);
  EXPECT_EQ(tail.size(), 4096u);
  EXPECT_EQ((*shm)->Source(100, 50).size(), 50u);
}

TEST(ClientSharedMemoryTest, MapMemorySourceOpensShmAndRefusesEmptyOrCudaWithoutCuda) {
  auto shm = SharedMemoryBuffer::Create(4096);
  ASSERT_TRUE(shm.ok());
  *(*shm)->at<uint32_t>(128) = 0xfeedu;
  auto region = MapMemorySource((*shm)->Source(128, 64));
  ASSERT_TRUE(region.ok()) << region.status().ToString();
  EXPECT_EQ(*(*region)->at<uint32_t>(0), 0xfeedu);
  EXPECT_EQ((*region)->size(), 64u);
  EXPECT_EQ(MapMemorySource(v1::MemorySource()).status().code(), StatusCode::kInvalidArgument);
#ifndef EPD_WITH_CUDA
  v1::MemorySource cuda;
  cuda.set_cuda_ipc_handle(std::string(64, '\0'));
  cuda.set_device(0);
  EXPECT_EQ(MapMemorySource(cuda).status().code(), StatusCode::kUnimplemented);
#endif
}

}  // namespace
}  // namespace epd
