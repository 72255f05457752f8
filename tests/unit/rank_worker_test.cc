#include "daemon/core/rank_worker.h"

#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <mutex>
#include <string>
#include <vector>

namespace epd {
namespace {

const RankWorker::Lane kLaneA{nullptr, 0};
const RankWorker::Lane kLaneB{nullptr, 1};

TEST(RankWorkerTest, RunsTasksInSubmissionOrder) {
  std::vector<int> order;
  std::mutex mutex;
  {
    RankWorker worker(0);
    for (int i = 0; i < 1000; ++i) {
      ASSERT_TRUE(worker.Post(i % 2 == 0 ? kLaneA : kLaneB, [&, i](bool run) {
        ASSERT_TRUE(run);
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
  ASSERT_TRUE(blocked.Post(kLaneA, [&](bool) {
    while (!released) std::this_thread::yield();
  }));
  ASSERT_TRUE(free.Post(kLaneA, [&](bool) {
    second_ran.set_value();
    released = true;
  }));
  EXPECT_EQ(second_done.wait_for(std::chrono::seconds(2)), std::future_status::ready)
      << "rank 1's task waited for rank 0's";
  released = true;
}

// A held lane's tasks wait, in order, until it resumes (the resume's own task first), while
// another lane's tasks run; a task of the backlog that holds the lane again stops the rest.
TEST(RankWorkerTest, AHeldLaneWaitsInOrderWhileOtherLanesRun) {
  std::vector<std::string> order;
  std::mutex mutex;
  auto note = [&](std::string what) {
    std::lock_guard lock(mutex);
    order.push_back(std::move(what));
  };
  std::promise<void> b_ran;
  RankWorker worker(0);
  ASSERT_TRUE(worker.Post(kLaneA, [&](bool) {
    note("a1 holds");
    worker.Hold(kLaneA);
  }));
  ASSERT_TRUE(worker.Post(kLaneA, [&](bool) { note("a2"); }));
  ASSERT_TRUE(worker.Post(kLaneA, [&](bool) {
    note("a3 holds");
    worker.Hold(kLaneA);
  }));
  ASSERT_TRUE(worker.Post(kLaneA, [&](bool) { note("a4"); }));
  ASSERT_TRUE(worker.Post(kLaneB, [&](bool) {
    note("b");
    b_ran.set_value();
  }));
  ASSERT_EQ(b_ran.get_future().wait_for(std::chrono::seconds(5)), std::future_status::ready);

  ASSERT_TRUE(worker.Resume(kLaneA, [&] { note("a1 resumed"); }));
  ASSERT_TRUE(worker.Post(kLaneA, [&](bool) { note("a5"); }));
  std::promise<void> resumed;
  ASSERT_TRUE(worker.Resume(kLaneA, [&] {
    note("a3 resumed");
    resumed.set_value();
  }));
  ASSERT_EQ(resumed.get_future().wait_for(std::chrono::seconds(5)), std::future_status::ready);
  std::promise<void> drained;
  ASSERT_TRUE(worker.Post(kLaneB, [&](bool) { drained.set_value(); }));
  ASSERT_EQ(drained.get_future().wait_for(std::chrono::seconds(5)), std::future_status::ready);
  std::lock_guard lock(mutex);
  EXPECT_EQ(order, (std::vector<std::string>{"a1 holds", "b", "a1 resumed", "a2", "a3 holds",
                                             "a3 resumed", "a4", "a5"}));
}

// Tasks of a lane still held when the worker stops are called, once, told they did not run.
TEST(RankWorkerTest, TasksOfALaneHeldAtTheEndAreToldTheyDidNotRun) {
  std::vector<bool> runs;
  {
    RankWorker worker(0);
    ASSERT_TRUE(worker.Post(kLaneA, [&](bool run) {
      runs.push_back(run);
      worker.Hold(kLaneA);
    }));
    ASSERT_TRUE(worker.Post(kLaneA, [&](bool run) { runs.push_back(run); }));
    ASSERT_TRUE(worker.Post(kLaneB, [&](bool run) { runs.push_back(run); }));
  }
  EXPECT_EQ(runs, (std::vector<bool>{true, true, false}));
}

}  // namespace
}  // namespace epd
