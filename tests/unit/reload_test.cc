// SIGHUP's plan: the log level applies, every other changed key is reported as ignored.
#include "daemon/app/reload.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace epd::app {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

TEST(ReloadTest, UnchangedConfigAppliesItsLogLevelAndIgnoresNothing) {
  DaemonConfig running;
  const ReloadPlan plan = PlanReload(running, running);
  EXPECT_EQ(plan.log_level, "info");
  EXPECT_THAT(plan.ignored, IsEmpty());
}

TEST(ReloadTest, ListsEveryKeyThatNeedsARestart) {
  DaemonConfig running;
  auto fresh = ParseDaemonConfig(R"(
log_level = "debug"
listen = "unix:///tmp/other.sock"
metrics_listen = ""
metrics_group_retention_ms = 0
op_timeout_ms = 5
[[group]]
name = "g"
world_size = 1
experts = 2
hidden = 8
max_tokens_per_rank = 4
top_k = 1
[cluster]
peer_timeout_ms = 100
)");
  ASSERT_TRUE(fresh.ok()) << fresh.status().ToString();
  const ReloadPlan plan = PlanReload(running, *fresh);
  EXPECT_EQ(plan.log_level, "debug");
  EXPECT_THAT(plan.ignored, ElementsAre("listen", "metrics_listen", "metrics_group_retention_ms",
                                        "op_timeout_ms", "group", "cluster"));
}

}  // namespace
}  // namespace epd::app
