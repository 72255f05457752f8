#include "daemon/core/session_table.h"

#include <gtest/gtest.h>

#include <future>
#include <set>

namespace epd {
namespace {

using std::chrono::milliseconds;

TEST(SessionTableTest, OpensFindsAndRemovesSessionsByRandomIds) {
  SessionTable table;
  std::set<SessionId> ids;
  for (int i = 0; i < 50; ++i) {
    auto session = table.Open(i % 2, "client", false, SessionPeer{7, 8, 9});
    ASSERT_TRUE(session.ok());
    EXPECT_NE((*session)->id, 0u);
    ids.insert((*session)->id);
  }
  EXPECT_EQ(ids.size(), 50u);
  EXPECT_EQ(table.open(), 50u);
  EXPECT_EQ(table.total(), 50u);
  const SessionId id = *ids.begin();
  auto found = table.Find(id);
  ASSERT_TRUE(found.ok());
  std::shared_ptr<Session> removed = table.Remove(id);
  ASSERT_EQ(removed, *found);
  EXPECT_TRUE(removed->closed);
  EXPECT_EQ(table.Remove(id), nullptr);
  auto gone = table.Find(id);
  EXPECT_EQ(gone.status().code(), StatusCode::kNotFound);
  EXPECT_NE(gone.status().message().find(fmt::format("session_id = {}", id)),
            std::string::npos);
  EXPECT_EQ(table.open(), 49u);
  EXPECT_EQ(table.total(), 50u);
}

TEST(SessionTableTest, ListSummarisesEachSession) {
  SessionTable table;
  auto session = table.Open(1, "frontend", true, SessionPeer{42, 1000, 100}).value();
  session->ops_completed += 3;
  session->ops_failed += 1;
  const std::vector<SessionSummary> list = table.List();
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].id, session->id);
  EXPECT_EQ(list[0].rank, 1);
  EXPECT_EQ(list[0].client_name, "frontend");
  EXPECT_TRUE(list[0].unary);
  EXPECT_EQ(list[0].peer.pid, 42);
  EXPECT_EQ(list[0].peer.uid, 1000);
  EXPECT_EQ(list[0].peer.gid, 100);
  EXPECT_EQ(list[0].opened, session->opened);
  EXPECT_EQ(list[0].ops_completed, 3u);
  EXPECT_EQ(list[0].ops_failed, 1u);
}

TEST(SessionTableTest, OpenSessionsAreBoundedByTheLimit) {
  SessionTable table;
  auto a = table.Open(0, "a", false, {}, 2).value();
  auto b = table.Open(1, "b", true, {}, 2).value();
  const Status third = table.Open(0, "c", false, {}, 2).status();
  EXPECT_EQ(third.code(), StatusCode::kResourceExhausted);
  EXPECT_NE(third.message().find("limits.sessions"), std::string::npos) << third.message();
  EXPECT_NE(third.message().find("2 open sessions"), std::string::npos) << third.message();
  // A closed session makes room.
  ASSERT_NE(table.Remove(a->id), nullptr);
  EXPECT_TRUE(table.Open(0, "c", false, {}, 2).ok());
}

TEST(SessionTableTest, StopOpeningRefusesNewSessionsOnly) {
  SessionTable table;
  auto before = table.Open(0, "a", false, {}).value();
  table.StopOpening();
  EXPECT_EQ(table.Open(0, "b", false, {}).status().code(), StatusCode::kUnavailable);
  EXPECT_TRUE(table.Find(before->id).ok());
}

TEST(SessionTableTest, OnlyUnarySessionsIdleOut) {
  SessionTable table;
  auto unary = table.Open(0, "u", true, {}).value();
  auto stream = table.Open(0, "s", false, {}).value();
  const Clock::time_point later = Clock::now() + milliseconds(1000);
  EXPECT_EQ(table.IdleUnary(later, milliseconds(500)), std::vector<SessionId>{unary->id});
  EXPECT_TRUE(table.IdleUnary(Clock::now(), milliseconds(500)).empty());
}

TEST(SessionTableTest, ReaperClosesIdleUnarySessions) {
  SessionTable table;
  auto unary = table.Open(0, "u", true, {}).value();
  std::promise<SessionId> closed;
  std::atomic<bool> once{false};
  IdleReaper reaper(table, milliseconds(20), milliseconds(10), [&](SessionId id) {
    table.Remove(id);
    if (!once.exchange(true)) closed.set_value(id);
  });
  auto future = closed.get_future();
  ASSERT_EQ(future.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_EQ(future.get(), unary->id);
  EXPECT_EQ(table.open(), 0u);
}

}  // namespace
}  // namespace epd
