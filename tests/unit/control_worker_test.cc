#include "daemon/core/control_worker.h"

#include <gtest/gtest.h>

#include <future>
#include <thread>
#include <vector>

namespace epd {
namespace {

TEST(ControlWorkerTest, RunsTasksInPostingOrderOffTheCaller) {
  ControlWorker worker;
  std::vector<int> order;
  std::promise<std::thread::id> ran_on;
  for (int i = 0; i < 100; ++i) worker.Post([&order, i] { order.push_back(i); });
  worker.Post([&] { ran_on.set_value(std::this_thread::get_id()); });
  auto future = ran_on.get_future();
  ASSERT_EQ(future.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_NE(future.get(), std::this_thread::get_id());
  ASSERT_EQ(order.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(order[i], i);
}

TEST(ControlWorkerTest, ATaskPostedFromTheWorkerRunsInlineSoNothingWaitsForItself) {
  ControlWorker worker;
  std::promise<bool> inner_ran_first;
  worker.Post([&] {
    EXPECT_TRUE(worker.OnWorkerThread());
    bool inner = false;
    worker.Post([&] { inner = true; });
    inner_ran_first.set_value(inner);
  });
  auto future = inner_ran_first.get_future();
  ASSERT_EQ(future.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_TRUE(future.get());
  EXPECT_FALSE(worker.OnWorkerThread());
}

TEST(ControlWorkerTest, ReleasesDropTheLastReferenceOnTheWorker) {
  struct Noting {
    explicit Noting(std::promise<std::thread::id>* p) : freed_on(p) {}
    std::promise<std::thread::id>* freed_on;
    ~Noting() { freed_on->set_value(std::this_thread::get_id()); }
  };
  std::promise<std::thread::id> freed_on;
  ControlWorker worker;
  Released released;
  released.push_back(std::make_shared<Noting>(&freed_on));
  worker.Release(std::move(released));
  auto future = freed_on.get_future();
  ASSERT_EQ(future.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_NE(future.get(), std::this_thread::get_id());
}

TEST(ControlWorkerTest, DestructionRunsWhatIsQueued) {
  int ran = 0;
  {
    ControlWorker worker;
    std::promise<void> gate;
    std::shared_future<void> opened = gate.get_future().share();
    worker.Post([opened] { opened.wait(); });  // holds the queue behind it
    for (int i = 0; i < 10; ++i) worker.Post([&ran] { ++ran; });
    EXPECT_GE(worker.queued(), 10u);
    gate.set_value();
  }
  EXPECT_EQ(ran, 10);
}

}  // namespace
}  // namespace epd
