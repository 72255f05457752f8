// A follower's retires (its groups ended): sent from its heartbeat thread once the leader
// answers, dropped when the follower uses the integer again first or when the leader
// restarted. A leader and a follower ClusterNode in this process, on loopback.
#include "daemon/cluster/cluster_node.h"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "tests/loopback_port.h"

namespace epd::cluster {
namespace {

using Clock = std::chrono::steady_clock;

// The follower heartbeats every peer_timeout / 4: 100 ms.
constexpr std::chrono::milliseconds kPeerTimeout{400};
constexpr std::chrono::milliseconds kSomeHeartbeats{600};
constexpr char kToken[] = "cluster-node-test-token";
const std::string kKey = GenerationIntegerKey(TransportKeyPrefix("group", "late"));

ClusterSettings Settings(int node_rank, int port) {
  ClusterSettings settings;
  settings.node_rank = node_rank;
  settings.nodes = 2;
  settings.leader = fmt::format("127.0.0.1:{}", port);
  settings.address = "127.0.0.1";
  settings.bootstrap_timeout = std::chrono::milliseconds(10'000);
  settings.peer_timeout = kPeerTimeout;
  return settings;
}

std::shared_ptr<ClusterNode> StartOrDie(int node_rank, int port) {
  auto node = ClusterNode::Start(Settings(node_rank, port), 1, kToken);
  EXPECT_TRUE(node.ok()) << node.status().ToString();
  return node.ok() ? *node : nullptr;
}

// The leader's value of kKey ("" when absent), once `expected` or after 5 s.
std::string WaitForLeaderValue(ClusterNode& leader, const std::string& expected) {
  const auto deadline = Clock::now() + std::chrono::seconds(5);
  std::string value;
  for (;;) {
    auto stored = leader.Get(kKey);
    value = stored.ok() && stored->has_value() ? **stored : "";
    if (value == expected || Clock::now() > deadline) return value;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

class ClusterNodeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    port_ = FreeLoopbackPort();
    ASSERT_GT(port_, 0);
    leader_ = StartOrDie(0, port_);
    ASSERT_NE(leader_, nullptr);
    follower_ = StartOrDie(1, port_);
    ASSERT_NE(follower_, nullptr);
  }

  int port_ = -1;
  std::shared_ptr<ClusterNode> leader_, follower_;
};

// The retire reaches the leader: it raises the integer and, the follower being its last
// user, erases it.
TEST_F(ClusterNodeTest, ARetireReachesTheLeader) {
  ASSERT_EQ(*follower_->Max(kKey, 2), 2);
  follower_->Retire(kKey, 3);
  EXPECT_EQ(WaitForLeaderValue(*leader_, ""), "");
  EXPECT_EQ(leader_->View().store_keys, 0u);
}

// With another user, the retire raises the integer past the follower's last generation.
TEST_F(ClusterNodeTest, ARetireRaisesTheIntegerForItsOtherUsers) {
  ASSERT_EQ(*leader_->Max(kKey, 0), 0);
  ASSERT_EQ(*follower_->Max(kKey, 2), 2);
  follower_->Retire(kKey, 3);
  EXPECT_EQ(WaitForLeaderValue(*leader_, "3"), "3");
}

// The follower uses the integer again before the leader took the retire: the retire is
// dropped (or, sent already, came first), so the follower stays a user and the leader keeps
// the integer.
TEST_F(ClusterNodeTest, UsingTheIntegerAgainDropsItsUnsentRetire) {
  ASSERT_EQ(*follower_->Max(kKey, 2), 2);
  follower_->Retire(kKey, 3);
  ASSERT_EQ(*follower_->Max(kKey, 3), 3);
  std::this_thread::sleep_for(kSomeHeartbeats);
  EXPECT_EQ(WaitForLeaderValue(*leader_, "3"), "3");
}

// A retire made while the leader was gone is not sent to its successor, which never counted
// the follower as a user: sending it would raise an integer the successor's own users hold.
TEST_F(ClusterNodeTest, AnUnsentRetireIsDroppedWhenTheLeaderRestarted) {
  ASSERT_EQ(*follower_->Max(kKey, 2), 2);
  leader_.reset();
  follower_->Retire(kKey, 5);  // a group ended while the leader is gone
  leader_ = StartOrDie(0, port_);
  ASSERT_NE(leader_, nullptr);
  ASSERT_EQ(*leader_->Max(kKey, 0), 0);  // a group of the name on the new leader
  const auto deadline = Clock::now() + std::chrono::seconds(5);
  while (leader_->View().members[1].state != NodeState::kUp && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(leader_->View().members[1].state, NodeState::kUp);
  std::this_thread::sleep_for(kSomeHeartbeats);
  EXPECT_EQ(WaitForLeaderValue(*leader_, "0"), "0");
}

// A node with another token is refused; the leader counts the refusal and the follower shows
// the leader's count after its next heartbeat.
TEST_F(ClusterNodeTest, AFollowerShowsTheLeadersRefusedCalls) {
  auto stranger = ClusterNode::Start(Settings(1, port_), 1, "another-token");
  ASSERT_FALSE(stranger.ok());
  EXPECT_EQ(stranger.status().code(), StatusCode::kUnauthenticated) << stranger.status().ToString();
  const uint64_t refused = leader_->View().refused_calls;
  EXPECT_GE(refused, 1u);
  std::this_thread::sleep_for(kSomeHeartbeats);
  EXPECT_EQ(follower_->View().refused_calls, refused);
}

}  // namespace
}  // namespace epd::cluster
