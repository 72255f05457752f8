// Randomised bad input on the leader's Cluster service, from an authenticated peer (the
// right token): requests changed one field each (proto_mutator.h) get canonical answers within
// the bound; the real follower keeps its membership; the leader keeps serving its frontends.
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <map>
#include <random>

#include "epd/v1/cluster.grpc.pb.h"
#include "tests/integration/fuzz_support.h"
#include "tests/integration/multinode_support.h"
#include "tests/loopback_port.h"

namespace epd::testing {
namespace {

TEST(ClusterFuzzTest, ChangedClusterRequestsGetCanonicalAnswersAndTheDeploymentStays) {
  auto cluster = LoopbackCluster::Create(2);
  ASSERT_TRUE(cluster.ok()) << cluster.status().ToString();
  ASSERT_EPD_OK((*cluster)->StartAll());
  std::ifstream token_file((*cluster)->token_file());
  std::string token((std::istreambuf_iterator<char>(token_file)), std::istreambuf_iterator<char>());
  while (!token.empty() && (token.back() == '\n' || token.back() == '\r')) token.pop_back();
  ASSERT_FALSE(token.empty());
  auto stub = v1::Cluster::NewStub(
      grpc::CreateChannel((*cluster)->leader(), grpc::InsecureChannelCredentials()));
  example::RankRunnerOptions options;
  options.group = UniqueName("leader-local");
  auto frontends = MakeRanks((*cluster)->node(0).address(), SmallProblem(kRanksPerNode), options);
  ASSERT_TRUE(frontends.ok()) << frontends.status().ToString();
  ASSERT_EPD_OK(RunGoodLayer(*frontends, 0));

  // A store call counts its caller among the users of the integer it raises or retires: one
  // naming no follower is refused, naming the field.
  for (int node_rank : {0, 2, -1}) {
    v1::StoreMaxRequest max;
    max.set_token(token);
    max.set_key("fuzz/caller");
    max.set_node_rank(node_rank);
    v1::StoreRetireRequest retire;
    retire.set_token(token);
    retire.set_key("fuzz/caller");
    retire.set_node_rank(node_rank);
    grpc::ClientContext max_context, retire_context;
    v1::StoreMaxResponse max_response;
    v1::StoreRetireResponse retire_response;
    for (const grpc::Status& answer :
         {stub->StoreMax(&max_context, max, &max_response),
          stub->StoreRetire(&retire_context, retire, &retire_response)}) {
      EXPECT_EQ(answer.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << node_rank;
      EXPECT_NE(answer.error_message().find(
                    fmt::format("node_rank = {} is outside [1, nodes = 2)", node_rank)),
                std::string::npos)
          << answer.error_message();
    }
  }

  std::vector<std::string> failures;
  std::map<StatusCode, int> codes;
  std::mt19937_64 rng(4242);
  auto call = [&](auto method, auto request, auto response) {
    const Mutation change = MutateOneField(request, rng);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + kAnswerBound);
    const auto start = std::chrono::steady_clock::now();
    const Status status = FromGrpcStatus(((*stub).*method)(&context, request, &response));
    const auto took = std::chrono::steady_clock::now() - start;
    ++codes[status.code()];
    if (!IsCanonicalError(status.code()) || took >= kAnswerBound - std::chrono::milliseconds(500) ||
        (!status.ok() && status.message().empty()) ||
        status.message().size() > kMaxAnswerMessageBytes) {
      failures.push_back(fmt::format("{} -> {}", change.description, status.ToString()));
    }
  };
  for (int i = 0; i < 400 * FuzzScale(); ++i) {
    const std::string key = fmt::format("fuzz/{}", i % 7);
    switch (std::uniform_int_distribution<int>(0, 5)(rng)) {
      case 0: {
        v1::JoinRequest r;
        r.set_token(token);
        r.set_node_rank(1);
        r.set_nodes(2);
        r.set_ranks_per_node(kRanksPerNode);
        r.set_address("127.0.0.1");
        r.set_incarnation(rng());
        call(&v1::Cluster::Stub::Join, r, v1::JoinResponse());
        break;
      }
      case 1: {
        v1::HeartbeatRequest r;
        r.set_token(token);
        r.set_node_rank(1);
        r.set_incarnation(rng());
        call(&v1::Cluster::Stub::Heartbeat, r, v1::ClusterView());
        break;
      }
      case 2: {
        v1::StoreSetRequest r;
        r.set_token(token);
        r.set_key(key);
        r.set_value("value");
        call(&v1::Cluster::Stub::StoreSet, r, v1::StoreSetResponse());
        break;
      }
      case 3: {
        v1::StoreGetRequest r;
        r.set_token(token);
        r.set_key(key);
        call(&v1::Cluster::Stub::StoreGet, r, v1::StoreGetResponse());
        break;
      }
      case 4: {
        v1::StoreMaxRequest r;
        r.set_token(token);
        r.set_key(key);
        r.set_value(i);
        r.set_node_rank(1);
        call(&v1::Cluster::Stub::StoreMax, r, v1::StoreMaxResponse());
        break;
      }
      default: {
        v1::StoreRetireRequest r;
        r.set_token(token);
        r.set_key(key);
        r.set_value(i);
        r.set_node_rank(1);
        call(&v1::Cluster::Stub::StoreRetire, r, v1::StoreRetireResponse());
        break;
      }
    }
  }
  // The deployment as it was: both nodes up in the leader's view, its frontends served.
  auto client = ConnectOrDie((*cluster)->node(0).address());
  auto info = client->GetNodeInfo();
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  for (const v1::ClusterNode& member : info->cluster().members()) {
    EXPECT_EQ(member.state(), v1::NODE_STATE_UP) << "node " << member.node_rank();
    EXPECT_EQ(member.joins(), 1u) << "node " << member.node_rank();
  }
  EXPECT_TRUE((*cluster)->node(1).running());
  EXPECT_EPD_OK(RunGoodLayer(*frontends, 1));
  const std::string summary = CodeSummary(codes);
  std::cout << "cluster answers:" << summary << "\n";
  EXPECT_GE(codes[StatusCode::kOk], 40) << summary;
  for (size_t i = 0; i < failures.size() && i < 30; ++i) ADD_FAILURE() << failures[i];
  EXPECT_TRUE(failures.empty()) << failures.size() << " failures";
}

// A node with a wrong token file retrying, or a stranger on the cluster port: every refused
// call is counted (GetNodeInfo, /metrics), while the leader logs only the first few of a
// minute, never the token sent.
TEST(ClusterRefusalTest, EveryRefusalIsCountedAndOnlyTheFirstOfAMinuteLogged) {
  auto cluster = LoopbackCluster::Create(2);
  ASSERT_TRUE(cluster.ok()) << cluster.status().ToString();
  const int metrics_port = FreeLoopbackPort();
  ASSERT_EPD_OK(
      (*cluster)->StartNode(0, {"--metrics-listen", fmt::format("127.0.0.1:{}", metrics_port)}));
  auto stub = v1::Cluster::NewStub(
      grpc::CreateChannel((*cluster)->leader(), grpc::InsecureChannelCredentials()));
  const std::string wrong_token = "not-the-deployment-secret-7171";
  constexpr int kCalls = 200;
  for (int i = 0; i < kCalls; ++i) {
    v1::HeartbeatRequest request;
    request.set_token(wrong_token);
    request.set_node_rank(1);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + kAnswerBound);
    v1::ClusterView view;
    const grpc::Status answer = stub->Heartbeat(&context, request, &view);
    ASSERT_EQ(answer.error_code(), grpc::StatusCode::UNAUTHENTICATED) << i;
  }
  auto info = ConnectOrDie((*cluster)->node(0).address())->GetNodeInfo();
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_EQ(info->cluster().refused_calls(), static_cast<uint64_t>(kCalls));
  const std::string metrics = Scrape(metrics_port);
  EXPECT_NE(metrics.find(fmt::format("\nepd_cluster_refused_calls_total {}\n", kCalls)),
            std::string::npos)
      << metrics;

  const std::string log = (*cluster)->node(0).ReadLog();
  int logged = 0;
  const std::string line = "cluster: Heartbeat from ";
  for (size_t at = log.find(line); at != std::string::npos; at = log.find(line, at + 1)) {
    ++logged;
    EXPECT_NE(log.find("refused: wrong deployment token", at), std::string::npos);
  }
  EXPECT_EQ(logged, 10) << log;  // kRefusalsLoggedPerMinute: the test takes well under a minute
  EXPECT_EQ(log.find(wrong_token), std::string::npos);
}

}  // namespace
}  // namespace epd::testing
