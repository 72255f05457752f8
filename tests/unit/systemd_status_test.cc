// The STATUS= line's part about groups that span daemons (SystemdNotifier::SpanningStatus).
#include <gtest/gtest.h>

#include "daemon/app/systemd_notifier.h"

namespace epd::app {
namespace {

GroupSummary Group(std::string name, std::vector<RankTransportState> transport) {
  GroupSummary group;
  group.config.name = std::move(name);
  group.transport = std::move(transport);
  return group;
}

RankTransportState Rank(int group_rank, bool formed, std::string failure = "", int at_s = 0) {
  RankTransportState rank;
  rank.group_rank = group_rank;
  rank.formed = formed;
  rank.failures = failure.empty() ? 0 : 1;
  rank.last_failure = std::move(failure);
  rank.last_failure_at = std::chrono::system_clock::time_point(std::chrono::seconds(at_s));
  return rank;
}

TEST(SpanningStatusTest, SaysNothingWithoutSpanningGroups) {
  EXPECT_EQ(SystemdNotifier::SpanningStatus({}), "");
  EXPECT_EQ(SystemdNotifier::SpanningStatus({Group("local", {})}), "");
}

TEST(SpanningStatusTest, CountsGroupsWhoseHostedRanksAreAllFormed) {
  EXPECT_EQ(SystemdNotifier::SpanningStatus({Group("local", {}),
                                             Group("a", {Rank(0, true), Rank(1, true)}),
                                             Group("b", {Rank(0, true), Rank(1, false)})}),
            ", spanning groups 1 of 2 formed")
      << "b is not formed on every rank; it never failed, so no reason is shown";
}

TEST(SpanningStatusTest, NamesTheFirstFailingGroupWithItsLatestFailure) {
  const std::string line = SystemdNotifier::SpanningStatus(
      {Group("a", {Rank(0, true)}),
       Group("b", {Rank(0, false, "group 'b': old reason", 10),
                   Rank(1, false, "group 'b': node 1 is down", 20)}),
       Group("c", {Rank(0, false, "group 'c': other", 30)})});
  EXPECT_EQ(line, ", spanning groups 1 of 3 formed; 'b': group 'b': node 1 is down");
}

TEST(SpanningStatusTest, CutsALongReason) {
  const std::string line =
      SystemdNotifier::SpanningStatus({Group("g", {Rank(0, false, std::string(500, 'x'), 1)})});
  EXPECT_EQ(line, ", spanning groups 0 of 1 formed; 'g': " + std::string(160, 'x'));
}

}  // namespace
}  // namespace epd::app
