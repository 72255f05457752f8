// A daemon of a spanning group killed mid-run: the survivors' in-flight ops fail with
// UNAVAILABLE naming the dead node well before the op timeout, the survivors keep serving
// health, GetNodeInfo (the dead node shown down) and their single-node groups, an op of the
// group while the node is shown down fails at once naming it, and once the node is restarted
// and its frontends created the group again, the spanning group re-forms by itself at the next
// op and produces correct results again. A formation waiting for a peer holds no other group.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <limits>
#include <string>
#include <thread>

#include "tests/integration/multinode_support.h"

namespace epd::testing {
namespace {

using Clock = std::chrono::steady_clock;

int64_t UnixMsNow() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Two nodes (the leader with `leader_flags`) whose frontends ran one good layer of a group
// spanning them.
struct TwoNodes {
  std::unique_ptr<LoopbackCluster> cluster;
  example::Problem problem = SpanningProblem(2);
  example::RankRunnerOptions options;
  std::vector<RankClient> ranks;
};
StatusOr<std::unique_ptr<TwoNodes>> StartTwoNodes(std::vector<std::string> leader_flags) {
  auto two = std::make_unique<TwoNodes>();
  EPD_ASSIGN_OR_RETURN(two->cluster, LoopbackCluster::Create(2));
  EPD_RETURN_IF_ERROR(two->cluster->StartNode(0, std::move(leader_flags)));
  EPD_RETURN_IF_ERROR(two->cluster->StartNode(1));
  two->options.group = UniqueName("spanning");
  EPD_ASSIGN_OR_RETURN(two->ranks, MakeSpanningRanks(*two->cluster, two->problem, two->options));
  EPD_RETURN_IF_ERROR(RunGoodLayer(two->ranks, 0));
  return two;
}

// The other node's ranks post layer `index`, which needs node `dead`; `dead` dies instead of
// taking part. Returns each surviving rank's outcome (by its local rank); the dead node's
// ranks are dropped.
std::vector<Status> KillNodeMidLayer(TwoNodes& two, int dead, int index) {
  const int survivor = 1 - dead;
  std::vector<Status> in_flight(kRanksPerNode);
  std::vector<std::thread> posting;
  for (int local = 0; local < kRanksPerNode; ++local) {
    posting.emplace_back([&, local] {
      const int g = survivor * kRanksPerNode + local;
      const auto in = example::MakeInputs(two.problem, 5, g, index, 8, true);
      in_flight[local] = two.ranks[g].runner->RunLayer(in, example::Identity, false);
    });
  }
  two.cluster->KillNode(dead);
  for (auto& thread : posting) thread.join();
  for (int local = 0; local < kRanksPerNode; ++local) {
    two.ranks[dead * kRanksPerNode + local] = RankClient{};
  }
  return in_flight;
}

// Node `node`'s frontends start afresh and create the group again; the other node's keep theirs.
Status RemakeFrontends(TwoNodes& two, int node) {
  // Every old session ends first: the group there goes with the last of them.
  for (int local = 0; local < kRanksPerNode; ++local) two.ranks[node * kRanksPerNode + local] = {};
  for (const Status& status : RunOnRanks(kRanksPerNode, [&](int local_rank) -> Status {
         const int g = node * kRanksPerNode + local_rank;
         EPD_ASSIGN_OR_RETURN(two.ranks[g].client,
                              Client::Connect(two.cluster->node(node).address()));
         example::RankRunnerOptions mine = two.options;
         mine.session_rank = local_rank;
         EPD_ASSIGN_OR_RETURN(two.ranks[g].runner, example::RankRunner::Create(
                                                       *two.ranks[g].client, two.problem, g, mine));
         return OkStatus();
       })) {
    EPD_RETURN_IF_ERROR(status);
  }
  return OkStatus();
}

// Node `node` comes back and its frontends create the group again.
Status RestartNode(TwoNodes& two, int node) {
  EPD_RETURN_IF_ERROR(two.cluster->StartNode(node));
  return RemakeFrontends(two, node);
}

// Keys in the leader's rendezvous store, as node 0's GetNodeInfo shows them.
uint64_t LeaderStoreKeys(TwoNodes& two) {
  auto keys = WaitForLeaderStoreKeys(*two.cluster, std::numeric_limits<uint64_t>::max());
  if (!keys.ok()) {
    ADD_FAILURE() << keys.status().ToString();
    return 0;
  }
  return *keys;
}

TEST(MultiNodeFaultTest, KilledNodeFailsInFlightOpsAndTheGroupReformsWhenItIsBack) {
  const int metrics_port = FreeLoopbackPort();
  auto started = StartTwoNodes({"--metrics-listen", fmt::format("127.0.0.1:{}", metrics_port)});
  ASSERT_TRUE(started.ok()) << started.status().ToString();
  LoopbackCluster& cluster = *(*started)->cluster;
  const example::Problem& p = (*started)->problem;
  const example::RankRunnerOptions& options = (*started)->options;
  std::vector<RankClient>* world = &(*started)->ranks;
  auto survivor = ConnectOrDie(cluster.node(0).address());

  // ListGroups shows the formed transport of each group rank node 0 hosts.
  const auto shown = TransportOf(*survivor, options.group);
  ASSERT_TRUE(shown.ok()) << shown.status().ToString();
  const std::vector<v1::RankTransport> before = *shown;
  ASSERT_EQ(before.size(), static_cast<size_t>(kRanksPerNode));
  for (int g = 0; g < kRanksPerNode; ++g) {
    EXPECT_EQ(before[g].group_rank(), g);
    EXPECT_TRUE(before[g].formed());
    EXPECT_GE(before[g].generation(), 0);
    EXPECT_EQ(before[g].formations(), 1u);
    EXPECT_EQ(before[g].failures(), 0u);
  }

  // Node 0's ranks post a layer that needs node 1, which dies instead of taking part.
  const int64_t killed_unix_ms = UnixMsNow();
  const auto killed_at = Clock::now();
  for (const Status& status : KillNodeMidLayer(**started, 1, 1)) {
    EXPECT_EPD_ERROR(status, StatusCode::kUnavailable, "on node 1");
  }
  // A broken connection, not the op timeout (4 s), ended the ops.
  EXPECT_LT(Clock::now() - killed_at, std::chrono::milliseconds(3'000));

  // The group's transport: no longer formed, the failure and its time shown.
  const auto failed = TransportOf(*survivor, options.group);
  ASSERT_TRUE(failed.ok()) << failed.status().ToString();
  for (const v1::RankTransport& rank : *failed) {
    EXPECT_FALSE(rank.formed()) << "group rank " << rank.group_rank();
    EXPECT_GE(rank.failures(), 1u);
    EXPECT_NE(rank.last_failure().find("node 1"), std::string::npos) << rank.last_failure();
    EXPECT_GE(rank.last_failure_unix_ms(), killed_unix_ms);
    EXPECT_LE(rank.last_failure_unix_ms(), UnixMsNow());
  }

  // The survivor serves: health, the cluster view (node 1 down), a group of its own.
  EXPECT_EQ(WaitForNodeState(*survivor, 1, v1::NODE_STATE_DOWN), v1::NODE_STATE_DOWN);
  {
    auto info = survivor->GetNodeInfo();
    ASSERT_TRUE(info.ok());
    EXPECT_GE(info->cluster().members(1).transport_failures(), 1u);
    // The good layer before the kill moved payload both ways.
    EXPECT_GT(info->cluster().members(1).bytes_sent(), 0u);
    EXPECT_GT(info->cluster().members(1).bytes_received(), 0u);
  }
  // The same per peer node on /metrics.
  const std::string metrics = Scrape(metrics_port);
  EXPECT_NE(metrics.find("epd_cluster_node_up{node=\"1\"} 0"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("epd_cluster_node_up{node=\"0\"} 1"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("epd_cluster_transport_failures_total{node=\"1\"} 2"), std::string::npos)
      << metrics;
  for (int g = 0; g < kRanksPerNode; ++g) {
    const std::string labels = fmt::format("{{group=\"{}\",group_rank=\"{}\"}}", options.group, g);
    EXPECT_NE(metrics.find("epd_group_transport_formed" + labels + " 0"), std::string::npos)
        << labels << "\n"
        << metrics;
    EXPECT_NE(metrics.find("epd_group_transport_failures_total" + labels + " 1"), std::string::npos)
        << labels << "\n"
        << metrics;
  }
  for (const char* direction : {"sent", "received"}) {
    const std::string series =
        fmt::format("epd_cluster_transport_bytes_total{{node=\"1\",direction=\"{}\"}} ", direction);
    const size_t at = metrics.find(series);
    ASSERT_NE(at, std::string::npos) << series << "\n" << metrics;
    EXPECT_GT(std::stod(metrics.substr(at + series.size())), 0.0) << series;
  }
  {
    // The leader's store as GetNodeInfo shows it (nothing forms while node 1 is down).
    // The leading newline skips the "# HELP epd_cluster_store_keys ..." line.
    const std::string series = "\nepd_cluster_store_keys ";
    const size_t at = metrics.find(series);
    ASSERT_NE(at, std::string::npos) << metrics;
    auto info = survivor->GetNodeInfo();
    ASSERT_TRUE(info.ok());
    EXPECT_GT(info->cluster().store_keys(), 0u);
    EXPECT_EQ(std::stod(metrics.substr(at + series.size())),
              static_cast<double>(info->cluster().store_keys()));
  }
  example::Problem local = p;
  local.ranks = kRanksPerNode;
  local.experts = 4;
  local.spans_nodes = false;
  example::RankRunnerOptions local_options;
  local_options.group = UniqueName("local");
  auto alone = MakeRanks(cluster.node(0).address(), local, local_options);
  ASSERT_TRUE(alone.ok()) << alone.status().ToString();
  EXPECT_EPD_OK(RunGoodLayer(*alone, 0));

  // Node 0's frontends retry the group while node 1 is down: the ops fail at once, naming
  // the node, instead of waiting for it until the op timeout.
  std::vector<Status> retry(kRanksPerNode);
  std::vector<std::chrono::milliseconds> retry_took(kRanksPerNode);
  std::vector<std::thread> retrying;
  for (int g = 0; g < kRanksPerNode; ++g) {
    retrying.emplace_back([&, g] {
      const auto start = Clock::now();
      retry[g] = (*world)[g].runner->RunLayer(example::MakeInputs(p, 5, g, 2, 8, true),
                                              example::Identity, false);
      retry_took[g] = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
    });
  }
  for (auto& thread : retrying) thread.join();
  for (int g = 0; g < kRanksPerNode; ++g) {
    EXPECT_EPD_ERROR(retry[g], StatusCode::kUnavailable, "node 1 is down");
    EXPECT_LT(retry_took[g], std::chrono::milliseconds(1'000));
  }

  // Node 1 comes back; its frontends create the group again; node 0's keep theirs. The next
  // layer re-forms the group and is correct.
  ASSERT_EPD_OK(RestartNode(**started, 1));
  EXPECT_EQ(WaitForNodeState(*survivor, 1, v1::NODE_STATE_UP), v1::NODE_STATE_UP);
  EXPECT_EPD_OK(RunGoodLayer(*world, 2));
  EXPECT_EPD_OK(RunGoodLayer(*world, 3, /*fenced=*/true));
  // Formed again, on a newer generation; the failure stays in the history.
  const auto reformed = TransportOf(*survivor, options.group);
  ASSERT_TRUE(reformed.ok()) << reformed.status().ToString();
  for (const v1::RankTransport& rank : *reformed) {
    EXPECT_TRUE(rank.formed()) << "group rank " << rank.group_rank();
    EXPECT_GT(rank.generation(), before[rank.group_rank()].generation());
    EXPECT_EQ(rank.formations(), 2u);
    EXPECT_NE(rank.last_failure().find("node 1"), std::string::npos) << rank.last_failure();
  }
}

// The leader dies: the follower's in-flight ops fail naming node 0, it keeps serving (health,
// the leader shown down, a group of its own), and once the leader is back (an empty store and
// membership) the follower joins it again by itself, replaying the generations it used, and
// the spanning group re-forms at its next layer, whose results are correct.
TEST(MultiNodeFaultTest, KilledLeaderIsJoinedAgainWhenBackAndTheGroupReforms) {
  auto started = StartTwoNodes({});
  ASSERT_TRUE(started.ok()) << started.status().ToString();
  TwoNodes& two = **started;
  auto follower = ConnectOrDie(two.cluster->node(1).address());

  const auto killed_at = Clock::now();
  for (const Status& status : KillNodeMidLayer(two, 0, 1)) {
    EXPECT_EPD_ERROR(status, StatusCode::kUnavailable, "node 0");
  }
  EXPECT_LT(Clock::now() - killed_at, std::chrono::milliseconds(3'000));

  EXPECT_EQ(WaitForNodeState(*follower, 0, v1::NODE_STATE_DOWN), v1::NODE_STATE_DOWN);
  example::Problem local = two.problem;
  local.ranks = kRanksPerNode;
  local.experts = 4;
  local.spans_nodes = false;
  example::RankRunnerOptions local_options;
  local_options.group = UniqueName("local");
  auto alone = MakeRanks(two.cluster->node(1).address(), local, local_options);
  ASSERT_TRUE(alone.ok()) << alone.status().ToString();
  EXPECT_EPD_OK(RunGoodLayer(*alone, 0));

  // The leader's ranks post at once, likely before the follower noticed the new leader (its
  // heartbeat comes every 200 ms): their formation waits for it to join, and so takes a
  // generation above every one the follower used. The follower's ranks post once it shows the
  // leader up (before that, their ops would fail at once: node 0 down).
  ASSERT_EPD_OK(RestartNode(two, 0));
  const std::vector<Status> reformed = RunOnRanks(two.problem.ranks, [&](int g) {
    if (g >= kRanksPerNode) WaitForNodeState(*follower, 0, v1::NODE_STATE_UP);
    example::RankRunner& runner = *two.ranks[g].runner;
    const int n = example::TokensFor(runner.problem(), g, 2);
    return runner.RunAndCheck(example::MakeInputs(runner.problem(), 7, g, 2, n, true),
                              example::Identity, false);
  });
  for (const Status& status : reformed) EXPECT_EPD_OK(status);
  auto leader = ConnectOrDie(two.cluster->node(0).address());
  EXPECT_EQ(WaitForNodeState(*leader, 1, v1::NODE_STATE_UP), v1::NODE_STATE_UP);
  EXPECT_EPD_OK(RunGoodLayer(two.ranks, 3, /*fenced=*/true));
  EXPECT_EPD_OK(RunGoodLayer(*alone, 1));
}

// Every frontend of a spanning group restarts (the group, not persistent, ends with their
// sessions on every node) and creates it again under the same name: it forms afresh and runs.
// Once it ended on every node, the leader's store keeps nothing of it.
TEST(MultiNodeFaultTest, AGroupMadeAgainUnderItsNameAfterEveryFrontendRestartedRuns) {
  auto started = StartTwoNodes({});
  ASSERT_TRUE(started.ok()) << started.status().ToString();
  TwoNodes& two = **started;
  std::vector<uint64_t> store_keys;
  for (int restart = 1; restart <= 3; ++restart) {
    SCOPED_TRACE(fmt::format("restart {}", restart));
    two.ranks.clear();
    auto again = MakeSpanningRanks(*two.cluster, two.problem, two.options);
    ASSERT_TRUE(again.ok()) << again.status().ToString();
    two.ranks = std::move(*again);
    EXPECT_EPD_OK(RunGoodLayer(two.ranks, restart));
    store_keys.push_back(LeaderStoreKeys(two));
  }
  // Each re-creation forms a new generation; the leader keeps only the current one's keys.
  EXPECT_LE(store_keys.back(), store_keys.front())
      << fmt::format("the leader's store keys by restart: {}", fmt::join(store_keys, " "));
  // Once the group ended on both nodes, nothing of it is left.
  two.ranks.clear();
  auto left = WaitForLeaderStoreKeys(*two.cluster, 0);
  ASSERT_TRUE(left.ok()) << left.status().ToString();
  EXPECT_EQ(*left, 0u) << fmt::format("the leader's store keys by restart: {}",
                                      fmt::join(store_keys, " "));
}

// A group that ended on every node is not carried to a restarted leader: the follower stopped
// carrying its generation integer when the group ended there, so the new leader's store starts
// empty (a follower carries only its live groups' integers, whatever names it used before).
TEST(MultiNodeFaultTest, AnEndedGroupIsNotCarriedToARestartedLeader) {
  auto started = StartTwoNodes({});
  ASSERT_TRUE(started.ok()) << started.status().ToString();
  TwoNodes& two = **started;
  two.ranks.clear();
  auto ended = WaitForLeaderStoreKeys(*two.cluster, 0);
  ASSERT_TRUE(ended.ok()) << ended.status().ToString();
  EXPECT_EQ(*ended, 0u);
  two.cluster->KillNode(0);
  ASSERT_EPD_OK(two.cluster->StartNode(0));
  auto leader = ConnectOrDie(two.cluster->node(0).address());
  ASSERT_EQ(WaitForNodeState(*leader, 1, v1::NODE_STATE_UP), v1::NODE_STATE_UP);
  auto carried = WaitForLeaderStoreKeys(*two.cluster, 0);
  ASSERT_TRUE(carried.ok()) << carried.status().ToString();
  EXPECT_EQ(*carried, 0u);
}

// A follower killed with its groups never retires them: its next start's join ends what it
// used, so a group that then ended on the survivor too leaves nothing in the leader's store.
TEST(MultiNodeFaultTest, AKilledFollowersGroupsEndWhenItJoinsAgain) {
  auto started = StartTwoNodes({});
  ASSERT_TRUE(started.ok()) << started.status().ToString();
  TwoNodes& two = **started;
  two.cluster->KillNode(1);
  two.ranks.clear();  // the group ends on node 0; node 1 still counts as using it
  EXPECT_GE(LeaderStoreKeys(two), 1u);
  ASSERT_EPD_OK(two.cluster->StartNode(1));
  auto left = WaitForLeaderStoreKeys(*two.cluster, 0);
  ASSERT_TRUE(left.ok()) << left.status().ToString();
  EXPECT_EQ(*left, 0u);
}

// The leader is cut off (stopped, not restarted) when a group ends on the follower, the last
// node that had it: the follower's group ends without waiting on it, keeps the retire and
// sends it once the leader answers again, so the leader's store keeps nothing of the group.
TEST(MultiNodeFaultTest, AGroupEndedWhileTheLeaderWasCutOffIsRetiredOnceItAnswers) {
  auto started = StartTwoNodes({});
  ASSERT_TRUE(started.ok()) << started.status().ToString();
  TwoNodes& two = **started;
  auto follower = ConnectOrDie(two.cluster->node(1).address());
  for (int local = 0; local < kRanksPerNode; ++local) two.ranks[local] = {};  // ends on node 0
  EXPECT_GE(LeaderStoreKeys(two), 1u);                                        // node 1 still has it

  const pid_t leader = two.cluster->node(0).pid();
  ASSERT_EQ(kill(leader, SIGSTOP), 0);
  struct Resume {
    pid_t pid;
    ~Resume() { kill(pid, SIGCONT); }
  } resume{leader};
  ASSERT_EQ(WaitForNodeState(*follower, 0, v1::NODE_STATE_DOWN), v1::NODE_STATE_DOWN);
  two.ranks.clear();  // ends on node 1
  const std::string evidence = "is retired once it answers";
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (two.cluster->node(1).ReadLog().find(evidence) == std::string::npos &&
         Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_NE(two.cluster->node(1).ReadLog().find(evidence), std::string::npos)
      << "node 1 did not end the group while the leader was cut off";

  ASSERT_EQ(kill(leader, SIGCONT), 0);
  auto left = WaitForLeaderStoreKeys(*two.cluster, 0);
  ASSERT_TRUE(left.ok()) << left.status().ToString();
  EXPECT_EQ(*left, 0u);
  EXPECT_EQ(WaitForNodeState(*follower, 0, v1::NODE_STATE_UP), v1::NODE_STATE_UP);
}

// Node 1's frontends restart (its daemon does not) and create the group again: node 0's next
// op fails fast naming node 1 (its mesh still names node 1's earlier links), node 1's first
// op fails when node 0's ranks do not come in that round, and the next layer re-forms and runs.
TEST(MultiNodeFaultTest, APeersRestartedFrontendsCostTheOthersOneOpThenTheGroupReforms) {
  auto started = StartTwoNodes({});
  ASSERT_TRUE(started.ok()) << started.status().ToString();
  TwoNodes& two = **started;
  ASSERT_EPD_OK(RemakeFrontends(two, 1));
  std::vector<Clock::duration> took(two.problem.ranks);
  const std::vector<Status> first = RunOnRanks(two.problem.ranks, [&](int g) {
    const auto start = Clock::now();
    example::RankRunner& runner = *two.ranks[g].runner;
    Status status = runner.RunLayer(example::MakeInputs(two.problem, 7, g, 1, 8, true),
                                    example::Identity, false);
    took[g] = Clock::now() - start;
    return status;
  });
  for (int g = 0; g < kRanksPerNode; ++g) {
    EXPECT_EPD_ERROR(first[g], StatusCode::kUnavailable, "node 1");
    EXPECT_LT(took[g], std::chrono::milliseconds(2'000)) << "group rank " << g;
  }
  EXPECT_EPD_OK(RunGoodLayer(two.ranks, 2));
  EXPECT_EPD_OK(RunGoodLayer(two.ranks, 3, /*fenced=*/true));
}

// A node that dies and comes back again and again costs the survivor no file descriptors or
// threads, and the leader no store keys: every failure retires the group's gloo mesh and the
// next op forms a new one (a new generation), so anything a retired mesh kept would grow with
// each round.
TEST(MultiNodeFaultTest, NodeDeathsAndReformationsLeaveNoDescriptorsOrThreadsBehind) {
  auto started = StartTwoNodes({});
  ASSERT_TRUE(started.ok()) << started.status().ToString();
  TwoNodes& two = **started;
  constexpr int kRounds = 4;
  std::vector<int> fds, threads;
  std::vector<uint64_t> store_keys;
  for (int round = 0; round < kRounds; ++round) {
    for (const Status& status : KillNodeMidLayer(two, 1, 1)) {
      EXPECT_EPD_ERROR(status, StatusCode::kUnavailable, "node 1");
    }
    ASSERT_EPD_OK(RestartNode(two, 1));
    SCOPED_TRACE(fmt::format("round {}", round));
    ASSERT_EPD_OK(RunGoodLayer(two.ranks, 2));
    fds.push_back(two.cluster->node(0).open_fds());
    threads.push_back(two.cluster->node(0).threads());
    store_keys.push_back(LeaderStoreKeys(two));
  }
  EXPECT_LE(store_keys.back(), store_keys.front())
      << fmt::format("the leader's store keys by round: {}", fmt::join(store_keys, " "));
  // The first round is the reference: its meshes, sessions and handles are those of the others.
  // Polled: a dead peer's connections close a little after its layer failed.
  DaemonProcess& node0 = two.cluster->node(0);
  EXPECT_LE(WaitAtMost([&] { return node0.open_fds(); }, fds.front()), fds.front())
      << fmt::format("node 0's open descriptors by round: {}", fmt::join(fds, " "));
  EXPECT_LE(WaitAtMost([&] { return node0.threads(); }, threads.front()), threads.front())
      << fmt::format("node 0's threads by round: {}", fmt::join(threads, " "));
}

// A group whose first op waits for a peer (its node-1 frontends never post, so its formation
// runs to the op timeout) holds no other group of the same ranks: a formed group spanning the
// same nodes runs layer after layer meanwhile.
TEST(MultiNodeFaultTest, AFormationWaitingForAPeerHoldsNoOtherGroupOfItsRanks) {
  auto started = StartTwoNodes({});
  ASSERT_TRUE(started.ok()) << started.status().ToString();
  LoopbackCluster& cluster = *(*started)->cluster;
  const example::Problem& p = (*started)->problem;
  std::vector<RankClient>& formed = (*started)->ranks;
  example::RankRunnerOptions waiting_options;
  waiting_options.group = UniqueName("waiting");
  auto waiting = MakeSpanningRanks(cluster, p, waiting_options);
  ASSERT_TRUE(waiting.ok()) << waiting.status().ToString();

  std::atomic<int> ended{0};
  std::vector<Status> waited(kRanksPerNode);
  std::vector<std::thread> posting;
  for (int g = 0; g < kRanksPerNode; ++g) {
    posting.emplace_back([&, g] {
      waited[g] = (*waiting)[g].runner->RunLayer(example::MakeInputs(p, 5, g, 0, 8, true),
                                                 example::Identity, false);
      ++ended;
    });
  }
  int layers = 1;  // StartTwoNodes ran layer 0
  auto slowest = std::chrono::milliseconds(0);
  while (ended.load() < kRanksPerNode) {
    const auto start = Clock::now();
    EXPECT_EPD_OK(RunGoodLayer(formed, layers++));
    slowest = std::max(slowest,
                       std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start));
  }
  for (auto& thread : posting) thread.join();
  for (const Status& status : waited) EXPECT_EPD_ERROR(status, StatusCode::kUnavailable, "node 1");
  // ListGroups tells the two groups apart: one never formed (why: node 1), one formed.
  auto node0 = ConnectOrDie(cluster.node(0).address());
  const auto never = TransportOf(*node0, waiting_options.group);
  ASSERT_TRUE(never.ok()) << never.status().ToString();
  for (const v1::RankTransport& rank : *never) {
    EXPECT_FALSE(rank.formed());
    EXPECT_EQ(rank.generation(), -1);
    EXPECT_EQ(rank.formations(), 0u);
    EXPECT_EQ(rank.failures(), 1u);
    EXPECT_NE(rank.last_failure().find("node 1"), std::string::npos) << rank.last_failure();
  }
  const auto serving = TransportOf(*node0, (*started)->options.group);
  ASSERT_TRUE(serving.ok()) << serving.status().ToString();
  for (const v1::RankTransport& rank : *serving) EXPECT_TRUE(rank.formed());
  EXPECT_GT(layers, 2) << "the formed group ran no layer while the other group's formation waited";
  EXPECT_LT(slowest, std::chrono::milliseconds(2'000))
      << "the formed group waited for the other group's formation";
}

TEST(MultiNodeFaultTest, ShutdownReleasesASpanningOpWaitingForAPeer) {
  auto started = StartTwoNodes({"--drain-timeout-ms", "100", "--log-level", "debug"});
  ASSERT_TRUE(started.ok()) << started.status().ToString();
  LoopbackCluster& cluster = *(*started)->cluster;
  const example::Problem& p = (*started)->problem;
  const example::RankRunnerOptions& options = (*started)->options;
  std::vector<RankClient>* world = &(*started)->ranks;

  // Node 0's rank 0 posts a layer node 1 never joins; node 0 is then stopped.
  Status waiting;
  std::thread posting([&] {
    example::RankRunner& runner = *(*world)[0].runner;
    waiting = runner.RunLayer(example::MakeInputs(p, 5, 0, 1, 8, true), example::Identity, false);
  });
  // Once it waits for node 1 (its debug log says so), the stop must end it promptly with
  // UNAVAILABLE (drain 100 ms, then every wait is cancelled), far below the op timeout of 4 s.
  const std::string waiting_line =
      fmt::format("rank 0: dispatch counts of group '{}': waiting for the peers", options.group);
  // The good layer's dispatch logged it once already: wait for the second.
  auto count = [&] {
    const std::string log = cluster.node(0).ReadLog();
    int found = 0;
    for (size_t at = log.find(waiting_line); at != std::string::npos;
         at = log.find(waiting_line, at + 1)) {
      ++found;
    }
    return found;
  };
  bool seen = false;
  for (int i = 0; i < 1000 && !seen; ++i) {
    seen = count() >= 2;
    if (!seen) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(seen) << cluster.node(0).ReadLog();
  const auto stopping = std::chrono::steady_clock::now();
  EXPECT_EQ(cluster.node(0).Stop(), 0);
  posting.join();
  EXPECT_LT(std::chrono::steady_clock::now() - stopping, std::chrono::milliseconds(3'000));
  // The frontend sees the op fail (UNAVAILABLE, or NOT_FOUND when its session closed first);
  // the daemon says why.
  EXPECT_FALSE(waiting.ok());
  EXPECT_NE(cluster.node(0).ReadLog().find("UNAVAILABLE: group '" + options.group +
                                           "': dispatch counts of group '" + options.group +
                                           "' stopped: epd is shutting down"),
            std::string::npos)
      << cluster.node(0).ReadLog();
}

}  // namespace
}  // namespace epd::testing
