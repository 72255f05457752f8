// Expert capacity (docs/design.md §3): overflow is an error naming the expert, never a silent
// drop; the combine that follows a failed dispatch must not return stale rows as a result.
#include <gtest/gtest.h>

#include "tests/integration/client_test_support.h"

namespace epd::testing {
namespace {

using example::Problem;

class CapacityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto daemon = DaemonProcess::Start({}, 2);
    ASSERT_TRUE(daemon.ok()) << daemon.status().ToString();
    daemon_ = std::move(daemon).value();
    problem_ = SmallProblem();
    problem_.expert_capacity = 3;
    options_.group = UniqueName("capacity");
    auto world = MakeRanks(daemon_->address(), problem_, options_);
    ASSERT_TRUE(world.ok()) << world.status().ToString();
    world_ = std::move(world).value();
  }

  // n tokens per rank; every token selects experts (0, 1) when `hot`, else one token per rank
  // selecting (2r, 2r+1): within capacity.
  example::RankInputs Inputs(int rank, int n, bool hot) {
    example::RankInputs in = example::MakeInputs(problem_, 1, rank, 0, n, true);
    for (int t = 0; t < n; ++t) {
      in.topk_idx[2 * t] = hot ? 0 : 2 * rank;
      in.topk_idx[2 * t + 1] = hot ? 1 : 2 * rank + 1;
    }
    return in;
  }

  std::unique_ptr<DaemonProcess> daemon_;
  Problem problem_;
  example::RankRunnerOptions options_;
  std::vector<RankClient> world_;
};

TEST_F(CapacityTest, OverflowIsAnErrorNamingTheExpertAndCombineDoesNotReturnStaleRows) {
  // A good layer first, so the handles hold valid rows from before.
  std::vector<Status> statuses = RunOnRanks(2, [&](int r) {
    return world_[r].runner->RunAndCheck(Inputs(r, 1, false), example::Identity, false);
  });
  for (const Status& status : statuses) ASSERT_TRUE(status.ok()) << status.ToString();

  // 2 ranks x 2 tokens select expert 0: 4 rows > capacity 3.
  statuses = RunOnRanks(2, [&](int r) -> Status {
    example::RankRunner& runner = *world_[r].runner;
    EPD_RETURN_IF_ERROR(runner.Stage(Inputs(r, 2, true)));
    EPD_RETURN_IF_ERROR(runner.session().Update(runner.handle_id(), runner.topk_ref(2),
                                                runner.weights_ref(2), BlockingOptions()));
    return runner.session().Dispatch(runner.handle_id(), runner.x_ref(2), BlockingOptions());
  });
  for (const Status& status : statuses) {
    EXPECT_EPD_ERROR(status, StatusCode::kResourceExhausted, "expert 0", "4 rows",
                     "expert_capacity=3");
  }
  statuses = RunOnRanks(2, [&](int r) -> Status {
    example::RankRunner& runner = *world_[r].runner;
    return runner.session().Combine(runner.handle_id(), runner.out_ref(2), std::nullopt,
                                    BlockingOptions());
  });
  for (int r = 0; r < 2; ++r) {
    EXPECT_FALSE(statuses[r].ok())
        << "rank " << r << ": combine after a failed dispatch reported success";
  }

  // Within capacity again: everything works.
  statuses = RunOnRanks(2, [&](int r) {
    return world_[r].runner->RunAndCheck(Inputs(r, 1, false), example::Identity, true);
  });
  for (const Status& status : statuses) EXPECT_TRUE(status.ok()) << status.ToString();
}

}  // namespace
}  // namespace epd::testing
