#include "daemon/core/rank_worker.h"

#include <gtest/gtest.h>

#include <atomic>
#include <future>
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
  std::promise<void> second_ran;
  std::future<void> second_done = second_ran.get_future();
  RankWorker blocked(0), free(1);
  ASSERT_TRUE(blocked.Post([&] {
    while (!released) std::this_thread::yield();
  }));
  ASSERT_TRUE(free.Post([&] {
    second_ran.set_value();
    released = true;
  }));
  EXPECT_EQ(second_done.wait_for(std::chrono::seconds(2)), std::future_status::ready)
      << "rank 1's task waited for rank 0's";
  released = true;
}

}  // namespace
}  // namespace epd
