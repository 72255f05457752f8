// Multi-node bootstrap: followers join the leader through the Cluster service; every way a
// deployment can be wrong ends a follower's start with a clear error (exit code, message),
// never a hang; the leader logs refusals without the token; GetNodeInfo shows the cluster.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <future>
#include <thread>

#include "tests/integration/multinode_support.h"

namespace epd::testing {
namespace {

constexpr int kExitRuntimeError = 1;
constexpr int kExitUsage = 2;

// The follower's command line with `extra` flags after the cluster's.
std::vector<std::string> FollowerArgs(const LoopbackCluster& cluster, int node,
                                      std::vector<std::string> extra, const std::string& socket) {
  std::vector<std::string> args = {"--backend", "cpu", "--cpu-ranks",
                                   std::to_string(kRanksPerNode), "--listen", "unix:" + socket,
                                   "--metrics-listen", ""};
  const auto cluster_args = cluster.NodeArgs(node);
  args.insert(args.end(), cluster_args.begin(), cluster_args.end());
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

class BootstrapTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto cluster = LoopbackCluster::Create(2);
    ASSERT_TRUE(cluster.ok()) << cluster.status().ToString();
    cluster_ = std::move(cluster).value();
  }
  // Runs a follower to its exit; returns its exit code and output.
  int RunFollower(int node, std::vector<std::string> extra, std::string* output) {
    return RunDaemonToExit(FollowerArgs(*cluster_, node, std::move(extra),
                                        cluster_->dir() + "/follower.sock"),
                           output, 20'000);
  }
  std::unique_ptr<LoopbackCluster> cluster_;
};

TEST_F(BootstrapTest, TwoNodesJoinAndShowTheClusterView) {
  ASSERT_EPD_OK(cluster_->StartAll());
  for (int node = 0; node < 2; ++node) {
    auto client = ConnectOrDie(cluster_->node(node).address());
    auto info = client->GetNodeInfo();
    ASSERT_TRUE(info.ok()) << info.status().ToString();
    const v1::ClusterInfo& view = info->cluster();
    EXPECT_EQ(view.node_rank(), node);
    EXPECT_EQ(view.nodes(), 2);
    EXPECT_EQ(view.ranks_per_node(), kRanksPerNode);
    EXPECT_EQ(view.leader(), cluster_->leader());
    ASSERT_EQ(view.members_size(), 2);
    for (const v1::ClusterNode& member : view.members()) {
      EXPECT_EQ(member.state(), v1::NODE_STATE_UP) << member.node_rank();
      EXPECT_EQ(member.address(), member.node_rank() == 0 ? cluster_->leader() : "127.0.0.1");
    }
  }
}

TEST_F(BootstrapTest, FollowerWithoutLeaderGivesUpAfterTheBootstrapTimeout) {
  std::string output;
  const int code = RunFollower(1, {"--bootstrap-timeout-ms", "400"}, &output);
  EXPECT_EQ(code, kExitRuntimeError) << output;
  EXPECT_NE(output.find("could not join the leader at " + cluster_->leader()), std::string::npos)
      << output;
  EXPECT_NE(output.find("cluster.bootstrap_timeout_ms = 400"), std::string::npos) << output;
}

TEST_F(BootstrapTest, FollowerStartedBeforeTheLeaderJoinsOnceItIsUp) {
  // Stand in for the leader's port until the follower's first attempt arrives (so it surely
  // started first and was refused), then start the real leader there. NOTE: the daemons die
  // with the thread that started them (PR_SET_PDEATHSIG), so the leader's thread lives until
  // the end of the test; the follower starts on this thread.
  const int port = std::stoi(cluster_->leader().substr(cluster_->leader().rfind(':') + 1));
  // Close-on-exec, or the follower would inherit the port.
  const int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int reuse = 1;
  setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &reuse, sizeof(reuse));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(static_cast<uint16_t>(port));
  ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  ASSERT_EQ(listen(listener, 4), 0);
  std::promise<Status> leader_started;
  std::promise<void> test_done;
  std::thread leader([&] {
    pollfd waiting{listener, POLLIN, 0};
    const bool attempted = poll(&waiting, 1, 10'000) == 1;
    // Closing with the attempt still queued resets it (no TIME_WAIT keeps the port busy).
    close(listener);
    leader_started.set_value(attempted ? cluster_->StartNode(0)
                                       : DeadlineExceededError("the follower never tried"));
    test_done.get_future().wait();
  });
  const Status follower = cluster_->StartNode(1);
  const Status started = leader_started.get_future().get();
  if (follower.ok() && started.ok()) {
    auto client = ConnectOrDie(cluster_->node(1).address());
    auto info = client->GetNodeInfo();
    EXPECT_TRUE(info.ok()) << info.status().ToString();
    if (info.ok()) {
      EXPECT_EQ(info->cluster().members(1).state(), v1::NODE_STATE_UP);
    }
  }
  EXPECT_EPD_OK(follower);
  EXPECT_EPD_OK(started);
  test_done.set_value();
  leader.join();
  const std::string log = cluster_->node(1).ReadLog();
  EXPECT_NE(log.find("not ready"), std::string::npos) << log;
}

TEST_F(BootstrapTest, WrongTokenIsRefusedAndNeverLogged) {
  ASSERT_EPD_OK(cluster_->StartNode(0));
  const std::string secret = "not-the-deployment-secret-4242";
  auto wrong = cluster_->WriteTokenFile("wrong", secret);
  ASSERT_TRUE(wrong.ok());
  std::string output;
  const int code = RunFollower(1, {"--cluster-token-file", *wrong}, &output);
  EXPECT_EQ(code, kExitRuntimeError) << output;
  EXPECT_NE(output.find("UNAUTHENTICATED"), std::string::npos) << output;
  EXPECT_NE(output.find("wrong deployment token"), std::string::npos) << output;
  EXPECT_EQ(output.find(secret), std::string::npos) << output;
  const std::string leader_log = cluster_->node(0).ReadLog();
  EXPECT_NE(leader_log.find("wrong deployment token"), std::string::npos) << leader_log;
  EXPECT_EQ(leader_log.find(secret), std::string::npos);
}

TEST_F(BootstrapTest, NodeCountMismatchIsRefused) {
  ASSERT_EPD_OK(cluster_->StartNode(0));
  std::string output;
  const int code = RunFollower(1, {"--nodes", "3"}, &output);
  EXPECT_EQ(code, kExitRuntimeError) << output;
  EXPECT_NE(output.find("node count mismatch: node 1 runs with nodes = 3, the leader with "
                        "nodes = 2"),
            std::string::npos)
      << output;
}

TEST_F(BootstrapTest, LocalRankCountMismatchIsRefused) {
  ASSERT_EPD_OK(cluster_->StartNode(0));
  std::string output;
  const int code = RunFollower(1, {"--cpu-ranks", "3"}, &output);
  EXPECT_EQ(code, kExitRuntimeError) << output;
  EXPECT_NE(output.find("local rank count mismatch: node 1 has 3 ranks, the leader 2"),
            std::string::npos)
      << output;
}

TEST_F(BootstrapTest, DuplicateNodeRankIsRefused) {
  ASSERT_EPD_OK(cluster_->StartAll());
  std::string output;
  // The live node 1 keeps its lease (peer timeout 800 ms); the newcomer gives up after 500 ms.
  const int code =
      RunFollower(1, {"--bootstrap-timeout-ms", "500", "--peer-timeout-ms", "800"}, &output);
  EXPECT_EQ(code, kExitRuntimeError) << output;
  EXPECT_NE(output.find("duplicate node rank 1"), std::string::npos) << output;
  EXPECT_NE(output.find("the daemon at 127.0.0.1 holds it"), std::string::npos) << output;
}

TEST_F(BootstrapTest, BadClusterSettingsAreUsageErrors) {
  std::string output;
  EXPECT_EQ(RunFollower(1, {"--node-rank", "2"}, &output), kExitUsage) << output;
  EXPECT_NE(output.find("cluster.node_rank = 2 is outside [0, cluster.nodes = 2)"),
            std::string::npos)
      << output;
  EXPECT_EQ(RunFollower(1, {"--cluster-token-file", ""}, &output), kExitUsage) << output;
  EXPECT_NE(output.find("cluster.token_file is required"), std::string::npos) << output;
  auto readable = cluster_->WriteTokenFile("readable", "x");
  ASSERT_TRUE(readable.ok());
  chmod(readable->c_str(), 0644);
  EXPECT_EQ(RunFollower(1, {"--cluster-token-file", *readable}, &output), kExitUsage) << output;
  EXPECT_NE(output.find("other users may read or write it"), std::string::npos) << output;
}

TEST_F(BootstrapTest, GroupConfigsThatDifferAcrossNodesFailTheFirstOp) {
  ASSERT_EPD_OK(cluster_->StartAll());
  example::Problem p = SpanningProblem(2);
  p.max_tokens = 4;
  example::RankRunnerOptions options;
  options.group = UniqueName("differs");
  // Node 1's frontends create the group with another hidden size.
  std::vector<RankClient> ranks(p.ranks);
  const std::vector<Status> made = RunOnRanks(p.ranks, [&](int g) -> Status {
    EPD_ASSIGN_OR_RETURN(ranks[g].client, Client::Connect(cluster_->node(g / kRanksPerNode).address()));
    example::Problem mine = p;
    if (g / kRanksPerNode == 1) mine.hidden = 128;
    example::RankRunnerOptions own = options;
    own.session_rank = g % kRanksPerNode;
    EPD_ASSIGN_OR_RETURN(ranks[g].runner, example::RankRunner::Create(*ranks[g].client, mine, g, own));
    return OkStatus();
  });
  for (const Status& status : made) ASSERT_EPD_OK(status);
  const std::vector<Status> ran = RunOnRanks(p.ranks, [&](int g) {
    example::RankRunner& runner = *ranks[g].runner;
    const auto in = example::MakeInputs(runner.problem(), 3, g, 0, 4, true);
    return runner.RunLayer(in, example::Identity, false);
  });
  for (int g = 0; g < p.ranks; ++g) {
    EXPECT_EPD_ERROR(ran[g], StatusCode::kFailedPrecondition, "created it with different configs",
                     "H=64", "H=128");
  }
}

TEST(SpanningGroupAloneTest, SpanningGroupOnADaemonWithoutClusterIsRefused) {
  auto daemon = DaemonProcess::Start({}, 2);
  ASSERT_TRUE(daemon.ok());
  auto client = ConnectOrDie((*daemon)->address());
  auto session = client->OpenSession(0, "alone");
  ASSERT_TRUE(session.ok());
  example::Problem p;
  p.ranks = 2;
  p.experts = 4;
  p.spans_nodes = true;
  auto created = (*session)->CreateGroup(p.Config(UniqueName("alone")), false);
  EXPECT_EPD_ERROR(created.status(), StatusCode::kFailedPrecondition, "spans_nodes",
                   "multi-node deployment");
}

}  // namespace
}  // namespace epd::testing

namespace epd::testing {
namespace {

TEST_F(BootstrapTest, ConfigFileDeclaresASpanningGroupOnEveryNode) {
  const std::string config = cluster_->dir() + "/epd.toml";
  {
    std::ofstream out(config);
    out << R"(
[[group]]
name = "declared"
world_size = 4
experts = 8
hidden = 64
max_tokens_per_rank = 4
top_k = 2
spans_nodes = true
  [[group.handle]]
  name = "layer0"
)";
  }
  ASSERT_EPD_OK(cluster_->StartNode(0, {"--config", config}));
  ASSERT_EPD_OK(cluster_->StartNode(1, {"--config", config}));
  for (int node = 0; node < 2; ++node) {
    auto client = ConnectOrDie(cluster_->node(node).address());
    auto info = client->GetNodeInfo();
    ASSERT_TRUE(info.ok());
    ASSERT_EQ(info->groups_size(), 1);
    EXPECT_TRUE(info->groups(0).spans_nodes());
    EXPECT_EQ(info->groups(0).ranks_size(), 4);
    // The persistent handle exists on each of the node's two ranks (global 2n and 2n + 1).
    EXPECT_EQ(HandlesOf(*client, "declared"), kRanksPerNode) << "node " << node;
  }
}

}  // namespace
}  // namespace epd::testing
