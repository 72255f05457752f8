#include "daemon/core/rank_worker.h"

#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <vector>

namespace epd {
namespace {

TEST(RankWorkerTest, RunsTasksInSubmissionOrder) {
  std::vector<int> order;
  std::mutex mutex;
  {
    RankWorker worker(0);
    for (int i = 0; i < 1000; ++i) {
      ASSERT_TRUE(worker.Post([&, i] {
        std::lock_guard lock(mutex);
        order.push_back(i);
      }));
    }
  }  // the destructor drains the queue
  ASSERT_EQ(order.size(), 1000u);
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(order[i], i);
}

TEST(RankWorkerTest, WorkersOfDifferentRanksRunConcurrently) {
  std::atomic<bool> released{false};
  std::atomic<bool> second_ran{false};
  RankWorker blocked(0), free(1);
  ASSERT_TRUE(blocked.Post([&] {
    while (!released) std::this_thread::yield();
  }));
  ASSERT_TRUE(free.Post([&] {
    second_ran = true;
    released = true;
  }));
  for (int i = 0; i < 2000 && !second_ran; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_TRUE(second_ran);
  released = true;
}

}  // namespace
}  // namespace epd
