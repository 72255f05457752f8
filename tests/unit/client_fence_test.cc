#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "client/epd/fence.h"
#include "client/epd/shared_memory.h"
#include "client/epd/tensor.h"
#include "common/fence_page.h"

namespace epd {
namespace {

using std::chrono::milliseconds;

// A fence page laid out as the daemon exports it (common/fence_page.h).
struct FakeFencePage {
  std::unique_ptr<SharedMemoryBuffer> shm;
  v1::CreateFenceResponse response;
};

FakeFencePage MakePage(FencePageHeader header = MakeFencePageHeader()) {
  FakeFencePage page;
  page.shm = std::move(SharedMemoryBuffer::Create(kFencePageBytes)).value();
  std::memcpy(page.shm->data(), &header, sizeof(header));
  page.response.set_fence_id(4);
  page.response.set_buffer_id(5);
  *page.response.mutable_source() = page.shm->Source();
  page.response.set_counter_offset(kFenceCounterOffset);
  return page;
}

TEST(ClientFenceTest, SignalIsSeenThroughThePageAndByWait) {
  FakeFencePage page = MakePage();
  auto fence = Fence::Open(page.response);
  ASSERT_TRUE(fence.ok()) << fence.status().ToString();
  EXPECT_EQ((*fence)->id(), 4u);
  EXPECT_EQ((*fence)->buffer_id(), 5u);
  EXPECT_EQ((*fence)->Load(), 0u);
  ASSERT_TRUE((*fence)->Signal(7).ok());
  EXPECT_EQ(*page.shm->at<uint64_t>(kFenceCounterOffset), 7u);
  EXPECT_TRUE((*fence)->Wait(7, milliseconds(10)).ok());
  EXPECT_TRUE((*fence)->Wait(3, milliseconds(10)).ok());
}

TEST(ClientFenceTest, WaitReturnsOnceAnotherWriterReachesTheValue) {
  FakeFencePage page = MakePage();
  auto fence = Fence::Open(page.response);
  ASSERT_TRUE(fence.ok());
  std::thread writer([&] {
    std::this_thread::sleep_for(milliseconds(20));
    std::atomic_ref<uint64_t>(*page.shm->at<uint64_t>(kFenceCounterOffset))
        .store(12, std::memory_order_release);
  });
  EXPECT_TRUE((*fence)->Wait(12, milliseconds(5'000)).ok());
  writer.join();
}

TEST(ClientFenceTest, WaitIsBoundedAndNamesBothValues) {
  FakeFencePage page = MakePage();
  auto fence = Fence::Open(page.response);
  ASSERT_TRUE(fence.ok());
  ASSERT_TRUE((*fence)->Signal(2).ok());
  const auto start = std::chrono::steady_clock::now();
  const Status status = (*fence)->Wait(9, milliseconds(30));
  EXPECT_LT(std::chrono::steady_clock::now() - start, milliseconds(2'000));
  EXPECT_EQ(status.code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(status.message().find("counter is 2"), std::string::npos) << status.ToString();
  EXPECT_NE(status.message().find(">= 9"), std::string::npos) << status.ToString();
}

TEST(ClientFenceTest, RejectsAPageWithAnotherVersion) {
  FencePageHeader header = MakeFencePageHeader();
  header.version = kFenceVersion + 1;
  FakeFencePage page = MakePage(header);
  const Status status = Fence::Open(page.response).status();
  EXPECT_EQ(status.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(status.message().find("version"), std::string::npos) << status.ToString();
}

TEST(ClientFenceTest, RejectsACounterOutsideThePage) {
  FakeFencePage page = MakePage();
  page.response.set_counter_offset(kFencePageBytes);
  EXPECT_FALSE(Fence::Open(page.response).ok());
}

TEST(ClientFenceTest, OptionsNameTheFence) {
  FakeFencePage page = MakePage();
  auto fence = Fence::Open(page.response);
  ASSERT_TRUE(fence.ok());
  const v1::OpOptions options = FencedOptions(fence->get(), 3, fence->get(), 4);
  EXPECT_EQ(options.wait().fence_id(), 4u);
  EXPECT_EQ(options.wait().value(), 3u);
  EXPECT_EQ(options.signal().value(), 4u);
  EXPECT_FALSE(options.blocking());
  EXPECT_TRUE(BlockingOptions().blocking());
  EXPECT_FALSE(FencedOptions(nullptr, 0, nullptr, 0).has_wait());
}

}  // namespace
}  // namespace epd
