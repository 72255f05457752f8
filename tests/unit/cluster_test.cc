// Multi-node pieces without any daemon: the leader's join rules (Membership), the token
// comparison, the cluster view on the wire, the [cluster] config table and a spanning group's
// placement of ranks.
#include "daemon/core/cluster.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "daemon/cluster/cluster_proto.h"
#include "daemon/cluster/membership.h"
#include "daemon/cluster/token.h"
#include "daemon/core/daemon_config.h"
#include "daemon/core/group_config.h"
#include "tests/unit/in_memory_store.h"

namespace epd::cluster {
namespace {

using ::testing::HasSubstr;

TEST(MembershipTest, JoinRulesNameWhatDiffers) {
  Membership members(3, 2, "10.0.0.1:7461", std::chrono::milliseconds(60'000));
  auto nodes = members.Join(1, 4, 2, "10.0.0.2", 11);
  EXPECT_EQ(nodes.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(nodes.status().message(),
              HasSubstr("node count mismatch: node 1 runs with nodes = 4, the leader with nodes = 3"));
  auto ranks = members.Join(1, 3, 4, "10.0.0.2", 11);
  EXPECT_EQ(ranks.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(ranks.status().message(), HasSubstr("local rank count mismatch: node 1 has 4 ranks"));
  EXPECT_EQ(members.Join(3, 3, 2, "10.0.0.9", 11).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(members.Join(0, 3, 2, "10.0.0.9", 11).status().code(), StatusCode::kAlreadyExists);

  auto first = members.Join(1, 3, 2, "10.0.0.2", 11);
  ASSERT_TRUE(first.ok());
  EXPECT_FALSE(first->rejoined);
  // The same daemon again (its join answer was lost): fine, not a restart.
  ASSERT_TRUE(members.Join(1, 3, 2, "10.0.0.2", 11).ok());
  // Another daemon while the first is alive: a duplicate.
  auto duplicate = members.Join(1, 3, 2, "10.0.0.3", 12);
  EXPECT_EQ(duplicate.status().code(), StatusCode::kAlreadyExists);
  EXPECT_THAT(duplicate.status().message(),
              HasSubstr("duplicate node rank 1: the daemon at 10.0.0.2 holds it"));

  const ClusterView view = members.View();
  ASSERT_EQ(view.members.size(), 3u);
  EXPECT_EQ(view.members[0].state, NodeState::kUp);
  EXPECT_EQ(view.members[1].state, NodeState::kUp);
  EXPECT_EQ(view.members[1].address, "10.0.0.2");
  EXPECT_EQ(view.members[2].state, NodeState::kAbsent);
  EXPECT_EQ(members.Heartbeat(2, 5).code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(members.Heartbeat(1, 11).ok());
}

// A spanning group's formation fails at once naming its member nodes that are down; a node not
// joined yet (absent), this node itself and nodes outside the group do not count.
TEST(CheckNoMemberDownTest, NamesTheGroupsDownNodesOnly) {
  GroupConfig c;
  c.name = "g";
  c.spans_nodes = true;
  c.span = GroupConfig::Span{0, 4, 2};  // this is node 0 of 4, two ranks each
  c.ranks = {0, 1, 2, 3, 4, 5};         // nodes 0, 1 and 2
  ClusterView view;
  view.members.resize(4);
  view.members[0].state = NodeState::kDown;  // this node itself: never counted
  view.members[1].state = NodeState::kUp;
  view.members[2].state = NodeState::kAbsent;
  view.members[3].state = NodeState::kDown;
  EXPECT_TRUE(CheckNoMemberDown(view, c).ok()) << CheckNoMemberDown(view, c).ToString();

  view.members[2].state = NodeState::kDown;
  Status down = CheckNoMemberDown(view, c);
  EXPECT_EQ(down.code(), StatusCode::kUnavailable);
  EXPECT_THAT(down.message(), HasSubstr("group 'g': node 2 is down"));
  view.members[1].state = NodeState::kDown;
  down = CheckNoMemberDown(view, c);
  EXPECT_THAT(down.message(), HasSubstr("node 1, 2 are down"));
}

TEST(MembershipTest, ASilentNodeIsDownAndMayBeReplaced) {
  Membership members(2, 1, "10.0.0.1:7461", std::chrono::milliseconds(0));
  ASSERT_TRUE(members.Join(1, 2, 1, "10.0.0.2", 11).ok());
  // A peer timeout of 0: the node is down at once, so a restarted daemon takes the rank.
  EXPECT_EQ(members.View().members[1].state, NodeState::kDown);
  auto restarted = members.Join(1, 2, 1, "10.0.0.2", 12);
  ASSERT_TRUE(restarted.ok());
  EXPECT_TRUE(restarted->rejoined);
  EXPECT_EQ(members.View().members[1].joins, 2u);
}

TEST(MembershipTest, StoreSetsGetsAndRaises) {
  Membership members(2, 1, "10.0.0.1:7461", std::chrono::milliseconds(1'000));
  EXPECT_FALSE(members.Get("k").has_value());
  members.Set("k", "v");
  EXPECT_EQ(members.Get("k").value(), "v");
  EXPECT_EQ(members.Max("gen", 0, 0), 0);
  EXPECT_EQ(members.Max("gen", 3, 0), 3);
  EXPECT_EQ(members.Max("gen", 1, 0), 3);
}

// A follower's join carries the store integers it raised (one above): a leader that restarted
// with an empty store raises them before the node shows up, and never lowers one.
TEST(MembershipTest, AJoinRaisesTheStoreToTheFloorsItCarries) {
  Membership members(2, 1, "10.0.0.1:7461", std::chrono::milliseconds(1'000));
  members.Max("kept", 9, 0);
  ASSERT_TRUE(members.Join(1, 2, 1, "10.0.0.2", 11, {{"gen", 4}, {"kept", 2}}).ok());
  EXPECT_EQ(members.Max("gen", 0, 0), 4);
  EXPECT_EQ(members.Max("kept", 0, 0), 9);
  // A refused join raises nothing.
  EXPECT_FALSE(members.Join(1, 3, 1, "10.0.0.2", 12, {{"other", 5}}).ok());
  EXPECT_FALSE(members.Get("other").has_value());
}

// Raising a group transport's generation drops the keys of the generations below it, and only
// those: the current one's, other groups' (a name that looks like a generation segment
// included, its prefix escaped) and keys that merely share the stem stay.
TEST(MembershipTest, RaisingAGenerationDropsTheKeysOfTheGenerationsBelowIt) {
  Membership members(2, 1, "10.0.0.1:7461", std::chrono::milliseconds(1'000));
  const std::string a = TransportKeyPrefix("group", "a");
  const std::string lookalike = TransportKeyPrefix("group", "a/g1");
  EXPECT_EQ(lookalike, "epd/group/a%2Fg1");
  EXPECT_EQ(TransportKeyPrefix("nccl", "50%/x"), "epd/nccl/50%25%2Fx");
  members.Max(a + "/generation", 1, 0);
  for (int g = 0; g <= 2; ++g) {
    members.Set(fmt::format("{}/g{}/config/0", a, g), "c");
    members.Set(FormedGenerationKey(a, g, 1), "1");
  }
  members.Set(a + "/g/loose", "not a generation's");
  members.Set(a + "/g7x/loose", "not a generation's");
  members.Set(lookalike + "/g0/config/0", "c");
  members.Max(lookalike + "/generation", 0, 0);
  members.Set(TransportKeyPrefix("nccl", "a") + "/g0/id", "other transport");
  const uint64_t before = members.View().store_keys;
  EXPECT_EQ(before, 12u);

  EXPECT_EQ(members.Max(a + "/generation", 2, 0), 2);
  for (int g = 0; g <= 1; ++g) {
    EXPECT_FALSE(members.Get(fmt::format("{}/g{}/config/0", a, g)).has_value()) << g;
    EXPECT_FALSE(members.Get(FormedGenerationKey(a, g, 1)).has_value()) << g;
  }
  EXPECT_TRUE(members.Get(a + "/g2/config/0").has_value());
  EXPECT_TRUE(members.Get(FormedGenerationKey(a, 2, 1)).has_value());
  EXPECT_EQ(members.Get(a + "/generation"), "2");
  for (const std::string& kept :
       {a + "/g/loose", a + "/g7x/loose", lookalike + "/g0/config/0", lookalike + "/generation",
        TransportKeyPrefix("nccl", "a") + "/g0/id"}) {
    EXPECT_TRUE(members.Get(kept).has_value()) << kept;
  }
  EXPECT_EQ(members.View().store_keys, before - 4);
  // Asking for a generation below the stored one drops nothing more.
  members.Max(a + "/generation", 1, 0);
  EXPECT_TRUE(members.Get(a + "/g2/config/0").has_value());
}

// Every node that had a group uses its generation integer until it retires it or restarts:
// the integer, and whatever is under its prefix, goes with its last user, and only then (other
// groups' keys, a name that looks like a generation segment included, stay).
TEST(MembershipTest, AGenerationIntegerGoesWithItsLastUser) {
  Membership members(2, 1, "10.0.0.1:7461", std::chrono::milliseconds(1'000));
  const std::string a = TransportKeyPrefix("group", "a");
  const std::string lookalike = TransportKeyPrefix("group", "a/g1");
  members.Max(a + "/generation", 0, 0);
  members.Max(a + "/generation", 1, 1);
  members.Set(a + "/g1/config/0", "c");
  members.Set(a + "/g/loose", "left by an older daemon");
  members.Max(lookalike + "/generation", 0, 1);
  members.Set(lookalike + "/g0/config/0", "c");
  members.Set(TransportKeyPrefix("nccl", "a") + "/g0/id", "other transport");
  EXPECT_EQ(members.View().store_keys, 6u);

  members.Retire(a + "/generation", 2, 1);  // node 1 formed generation 1; node 0 uses it still
  EXPECT_EQ(members.Get(a + "/generation"), "2");
  EXPECT_FALSE(members.Get(a + "/g1/config/0").has_value());
  EXPECT_EQ(members.View().store_keys, 5u);
  members.Retire(a + "/generation", 0, 0);  // the last user
  for (const std::string& gone : {a + "/generation", a + "/g/loose"}) {
    EXPECT_FALSE(members.Get(gone).has_value()) << gone;
  }
  EXPECT_EQ(members.View().store_keys, 3u);
  // Formed again, the name starts from nothing.
  EXPECT_EQ(members.Max(a + "/generation", 0, 1), 0);
}

// A restarted daemon's join ends what its predecessor used (its groups went with it), and its
// floors are what it uses now; a join of the same daemon again (a restarted leader) ends nothing.
TEST(MembershipTest, ARestartedNodesJoinEndsWhatItsPredecessorUsed) {
  Membership members(2, 1, "10.0.0.1:7461", std::chrono::milliseconds(0));
  const std::string only1 = GenerationIntegerKey(TransportKeyPrefix("group", "one"));
  const std::string both = GenerationIntegerKey(TransportKeyPrefix("group", "both"));
  const std::string later = GenerationIntegerKey(TransportKeyPrefix("group", "later"));
  ASSERT_TRUE(members.Join(1, 2, 1, "10.0.0.2", 11).ok());
  members.Max(only1, 3, 1);
  members.Set(GenerationKeysPrefix(TransportKeyPrefix("group", "one"), 3) + "id", "x");
  members.Max(both, 1, 1);
  members.Max(both, 1, 0);
  ASSERT_TRUE(members.Join(1, 2, 1, "10.0.0.2", 11, {{later, 2}}).ok());  // the same daemon
  EXPECT_EQ(members.Get(only1), "3");
  ASSERT_TRUE(members.Join(1, 2, 1, "10.0.0.2", 12, {{later, 5}}).ok());  // restarted
  EXPECT_FALSE(members.Get(only1).has_value());
  EXPECT_EQ(members.Get(both), "1");  // node 0 uses it
  EXPECT_EQ(members.Get(later), "5");
  EXPECT_EQ(members.View().store_keys, 2u);
  members.Retire(later, 0, 1);
  EXPECT_FALSE(members.Get(later).has_value());
}

// A destroyed group's transport raises the integer past the last generation it formed (its
// keys go) and counts its node out; the last user's retire erases the integer. Either way the
// node stops carrying the integer.
TEST(RetireGenerationTest, RaisesPastTheLastFormedGenerationAndCountsTheNodeOut) {
  const std::string prefix = TransportKeyPrefix("group", "g");
  const std::string key = GenerationIntegerKey(prefix);
  testing::InMemoryStore up(2);
  testing::InMemoryStore node1 = up.Node(1);
  ASSERT_EQ(*node1.Max(key, 3), 3);  // node 1 formed generation 3 ...
  ASSERT_TRUE(node1.Set(FormedGenerationKey(prefix, 3, 1), "1").ok());
  ASSERT_EQ(*up.Max(key, 0), 3);  // ... and node 0 has the group too, not formed yet
  RetireGeneration(node1, prefix, 3);
  EXPECT_FALSE(up.Get(FormedGenerationKey(prefix, 3, 1))->has_value());
  EXPECT_EQ(up.Get(key).value(), "4");
  EXPECT_TRUE(node1.forgot(key));
  RetireGeneration(up, prefix, -1);  // the last user; it formed none
  EXPECT_FALSE(up.Get(key)->has_value());
  EXPECT_EQ(up.View().store_keys, 0u);
}

// A formation waits for the group's nodes that have not joined (a restarted leader has not
// heard them yet), bounded, and goes on once they did.
TEST(AwaitMembersJoinedTest, WaitsForTheGroupsAbsentNodesOnly) {
  GroupConfig c;
  c.name = "g";
  c.spans_nodes = true;
  c.span = GroupConfig::Span{0, 3, 1};  // node 0 of 3, one rank each
  c.ranks = {0, 1};                     // nodes 0 and 1: node 2 is not in the group
  testing::InMemoryStore store(3, /*joined=*/false);
  const auto soon = [] { return std::chrono::steady_clock::now() + std::chrono::milliseconds(50); };
  const Status absent = AwaitMembersJoined(store, c, soon(), {});
  EXPECT_EQ(absent.code(), StatusCode::kUnavailable);
  EXPECT_THAT(absent.message(), HasSubstr("group 'g': node 1 has not joined the cluster in time"));
  const Status stopped = AwaitMembersJoined(
      store, c, std::chrono::steady_clock::now() + std::chrono::seconds(30), [] { return true; });
  EXPECT_THAT(stopped.message(), HasSubstr("stopped waiting"));
  store.Join(1);
  EXPECT_TRUE(AwaitMembersJoined(store, c, soon(), {}).ok());
}

TEST(ClusterViewProtoTest, EveryPerPeerCounterCrossesTheWire) {
  ClusterView view;
  view.nodes = 2;
  view.ranks_per_node = 4;
  view.store_keys = 42;
  ClusterMember peer;
  peer.node_rank = 1;
  peer.address = "10.0.0.2:7000";
  peer.state = NodeState::kDown;
  peer.joins = 3;
  peer.last_seen_ms_ago = 1500;
  peer.transport_failures = 2;
  peer.bytes_sent = 123456789012;
  peer.bytes_received = 987654321;
  view.members = {ClusterMember{}, peer};
  v1::ClusterView wire;
  ToProto(view, &wire);
  const ClusterView back = FromProto(wire);
  ASSERT_EQ(back.members.size(), 2u);
  const ClusterMember& got = back.members[1];
  EXPECT_EQ(got.node_rank, 1);
  EXPECT_EQ(got.address, "10.0.0.2:7000");
  EXPECT_EQ(got.state, NodeState::kDown);
  EXPECT_EQ(got.joins, 3u);
  EXPECT_EQ(got.last_seen_ms_ago, 1500u);
  EXPECT_EQ(got.transport_failures, 2u);
  EXPECT_EQ(got.bytes_sent, 123456789012u);
  EXPECT_EQ(got.bytes_received, 987654321u);
  EXPECT_EQ(back.ranks_per_node, 4);
  EXPECT_EQ(back.store_keys, 42u);
}

TEST(TokenTest, ComparesWholeTokens) {
  EXPECT_TRUE(TokensEqual("secret", "secret"));
  EXPECT_FALSE(TokensEqual("secret", "secreT"));
  EXPECT_FALSE(TokensEqual("secret", "secret2"));
  EXPECT_FALSE(TokensEqual("", "x"));
  auto missing = ReadTokenFile("/nonexistent/epd-token");
  EXPECT_EQ(missing.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(missing.status().message(), HasSubstr("cluster.token_file = /nonexistent/epd-token"));
}

TEST(ClusterConfigTest, ParsesTheClusterTableAndPlacesSpanningGroups) {
  auto config = ParseDaemonConfig(R"(
cpu_ranks = 2
[cluster]
node_rank = 1
nodes = 2
leader = "10.0.0.1:7461"
address = "10.0.0.2"
token_file = "/etc/epd/token"
bootstrap_timeout_ms = 5000
peer_timeout_ms = 700
[[group]]
name = "wide"
world_size = 4
experts = 8
hidden = 64
max_tokens_per_rank = 4
top_k = 2
spans_nodes = true
  [[group.handle]]
  name = "layer0"
)",
                                  "test.toml");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->cluster.node_rank, 1);
  EXPECT_EQ(config->cluster.nodes, 2);
  EXPECT_EQ(config->cluster.peer_timeout.count(), 700);
  EXPECT_TRUE(ValidateClusterSettings(config->cluster).ok());
  ApplyClusterSpan(&*config, 2);
  const GroupConfig& group = config->groups[0].config;
  EXPECT_EQ(group.span.node, 1);
  // Node 1 hosts global ranks 2 and 3 as its node ranks 0 and 1.
  EXPECT_EQ(config->groups[0].handles[0].ranks, (std::vector<int>{0, 1}));
  EXPECT_EQ(group.GroupRankOf(0), 2);
  EXPECT_EQ(group.NodeRankOf(3), 1);
  EXPECT_EQ(group.NodeRankOf(1), -1);
  EXPECT_EQ(group.NodeOf(1), 0);
  EXPECT_TRUE(CheckGroupsAgainstNode(*config, 2).ok());
}

TEST(ClusterConfigTest, BadSettingsNameTheKey) {
  ClusterSettings cluster;
  cluster.nodes = 2;
  cluster.node_rank = 0;
  cluster.leader = "leader:1";
  cluster.address = "10.0.0.1";
  cluster.token_file = "/t";
  EXPECT_THAT(ValidateClusterSettings(cluster).message(), HasSubstr("cluster.leader"));
  cluster.leader = "10.0.0.1:7461";
  cluster.address = "10.0.0.1:5";
  EXPECT_THAT(ValidateClusterSettings(cluster).message(), HasSubstr("cluster.address"));
  cluster.address = "10.0.0.1";
  cluster.token_file.clear();
  EXPECT_THAT(ValidateClusterSettings(cluster).message(), HasSubstr("cluster.token_file"));
  auto unknown = ParseDaemonConfig("[cluster]\nnode = 1\n", "test.toml");
  EXPECT_THAT(unknown.status().message(), HasSubstr("cluster.node is not a known key"));
}

TEST(SpanningGroupConfigTest, ValidatesGlobalRanksAgainstTheCluster) {
  GroupConfig group;
  group.name = "g";
  group.ranks = {0, 1, 2, 3, 4};
  group.experts = 10;
  group.hidden = 64;
  group.max_tokens_per_rank = 4;
  group.top_k = 2;
  group.spans_nodes = true;
  EXPECT_EQ(group.Validate(2).code(), StatusCode::kFailedPrecondition);  // no cluster
  group.span = GroupConfig::Span{0, 2, 2};
  EXPECT_THAT(group.Validate(2).message(), HasSubstr("global rank 4 is outside the cluster's ranks [0, 4)"));
  group.ranks = {0, 1, 2, 3};
  group.experts = 8;
  EXPECT_TRUE(group.Validate(2).ok());
  EXPECT_THAT(group.ToString(), HasSubstr("global ranks [0,1,2,3]"));
}

}  // namespace
}  // namespace epd::cluster
