#include "tests/integration/multinode_support.h"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

namespace epd::testing {

StatusOr<std::unique_ptr<LoopbackCluster>> LoopbackCluster::Create(int nodes,
                                                                    int ranks_per_node) {
  std::unique_ptr<LoopbackCluster> cluster(new LoopbackCluster());
  cluster->nodes_ = nodes;
  cluster->ranks_per_node_ = ranks_per_node;
  cluster->daemons_.resize(nodes);
  char pattern[] = "/tmp/epd-cluster-XXXXXX";
  if (mkdtemp(pattern) == nullptr) return InternalError("mkdtemp failed");
  cluster->dir_ = pattern;
  EPD_ASSIGN_OR_RETURN(cluster->token_file_,
                       cluster->WriteTokenFile("token", UniqueName("deployment-secret")));
  const int port = FreeLoopbackPort();
  if (port <= 0) return InternalError("no free loopback port");
  cluster->leader_ = fmt::format("127.0.0.1:{}", port);
  return cluster;
}

LoopbackCluster::~LoopbackCluster() {
  // A failed test shows what every node logged (the directories go with the daemons).
  if (::testing::Test::HasFailure() || std::getenv("EPD_TEST_SHOW_NODE_LOGS") != nullptr) {
    for (size_t n = 0; n < daemons_.size(); ++n) {
      if (daemons_[n] != nullptr) {
        std::fprintf(stderr, "---- node %zu log ----\n%s", n, daemons_[n]->ReadLog().c_str());
      }
    }
  }
  daemons_.clear();
  std::error_code ignored;
  std::filesystem::remove_all(dir_, ignored);
}

StatusOr<std::string> LoopbackCluster::WriteTokenFile(const std::string& name,
                                                      const std::string& token) const {
  const std::string path = dir_ + "/" + name;
  {
    std::ofstream out(path);
    out << token << "\n";
    if (!out) return InternalError("cannot write {}", path);
  }
  chmod(path.c_str(), 0600);
  return path;
}

std::vector<std::string> LoopbackCluster::NodeArgs(int node) const {
  return {"--nodes",
          std::to_string(nodes_),
          "--node-rank",
          std::to_string(node),
          "--leader",
          leader_,
          "--cluster-address",
          "127.0.0.1",
          "--cluster-token-file",
          token_file_,
          "--op-timeout-ms",
          "4000",
          "--peer-timeout-ms",
          "800",
          "--bootstrap-timeout-ms",
          "8000"};
}

Status LoopbackCluster::StartNode(int node, std::vector<std::string> extra) {
  std::vector<std::string> args = NodeArgs(node);
  args.insert(args.end(), extra.begin(), extra.end());
  EPD_ASSIGN_OR_RETURN(daemons_[node], DaemonProcess::Start(args, ranks_per_node_));
  return OkStatus();
}

Status LoopbackCluster::StartAll() {
  for (int n = 0; n < nodes_; ++n) EPD_RETURN_IF_ERROR(StartNode(n));
  return OkStatus();
}

std::vector<uint8_t> Snapshot(example::RankRunner& runner, int num_tokens, const ViewCopy& copy) {
  HandleView& v = runner.view();
  std::vector<uint8_t> bytes;
  auto add = [&](const void* data, size_t size) {
    if (data == nullptr) return;
    bytes.resize(bytes.size() + size);
    copy(bytes.data() + bytes.size() - size, data, size);
  };
  const auto rows = static_cast<size_t>(v.recv_rows());
  const int K = runner.problem().top_k;
  // High-throughput: every recv_capacity row, stale ones too (both runs have one history).
  const bool ht = v.high_throughput();
  add(v.recv_x(), rows * v.row_bytes());
  add(v.recv_src(), rows * (ht ? 2 : 3) * sizeof(int32_t));
  add(v.recv_weights(), rows * sizeof(float));
  add(v.recv_topk_idx(), rows * K * sizeof(int32_t));
  add(v.recv_topk_weights(), rows * K * sizeof(float));
  add(v.recv_scales(), rows * v.scale_row_bytes());
  const size_t counts = v.expert_major() || ht ? runner.problem().local_experts()
                                               : runner.problem().ranks;
  add(v.recv_counts(), counts * sizeof(int32_t));
  add(v.recv_offsets(), (counts + (ht ? 1 : 0)) * sizeof(int32_t));
  add(v.recv_rank_counts(), runner.problem().ranks * sizeof(int32_t));
  add(v.recv_rank_offsets(), runner.problem().ranks * sizeof(int32_t));
  add(v.expert_rows(), v.info().buffers().expert_rows_entries() * sizeof(int32_t));
  // out() is a host copy on either backend.
  const auto* out = static_cast<const uint8_t*>(runner.out());
  bytes.insert(bytes.end(), out, out + static_cast<size_t>(num_tokens) * runner.problem().row_bytes());
  return bytes;
}

example::Problem SpanningProblem(int nodes) {
  example::Problem p;
  p.ranks = nodes * kRanksPerNode;
  p.experts = 2 * p.ranks;
  p.hidden = 64;
  p.max_tokens = 8;
  p.top_k = 2;
  p.spans_nodes = true;
  return p;
}

StatusOr<std::vector<RankClient>> MakeSpanningRanks(LoopbackCluster& cluster,
                                                    const example::Problem& problem,
                                                    example::RankRunnerOptions options,
                                                    const std::vector<int>& device_of_node) {
  std::vector<RankClient> ranks(problem.ranks);
  const int per_node = cluster.ranks_per_node();
  const std::vector<Status> statuses = RunOnRanks(problem.ranks, [&](int g) -> Status {
    auto client = Client::Connect(cluster.node(g / per_node).address());
    if (!client.ok()) return client.status();
    ranks[g].client = std::move(client).value();
    example::RankRunnerOptions mine = options;
    mine.session_rank = g % per_node;
    if (!device_of_node.empty()) mine.device = device_of_node[g / per_node];
    auto runner = example::RankRunner::Create(*ranks[g].client, problem, g, mine);
    if (!runner.ok()) return runner.status().WithContext(fmt::format("group rank {}", g));
    ranks[g].runner = std::move(runner).value();
    return OkStatus();
  });
  for (const Status& status : statuses) EPD_RETURN_IF_ERROR(status);
  return ranks;
}

v1::NodeState WaitForNodeState(Client& client, int node, v1::NodeState state) {
  v1::NodeState seen = v1::NODE_STATE_UNSPECIFIED;
  for (int i = 0; i < 1000 && seen != state; ++i) {
    auto info = client.GetNodeInfo();
    if (info.ok() && info->cluster().members_size() > node) {
      seen = info->cluster().members(node).state();
    }
    if (seen != state) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return seen;
}

StatusOr<std::vector<v1::RankTransport>> TransportOf(Client& client, const std::string& group) {
  EPD_ASSIGN_OR_RETURN(std::vector<v1::GroupSummary> groups, client.ListGroups());
  for (const v1::GroupSummary& summary : groups) {
    if (summary.config().name() == group) {
      return std::vector<v1::RankTransport>(summary.transport().begin(), summary.transport().end());
    }
  }
  return NotFoundError("ListGroups shows no group '{}'", group);
}

StatusOr<uint64_t> WaitForLeaderStoreKeys(LoopbackCluster& cluster, uint64_t bound) {
  EPD_ASSIGN_OR_RETURN(std::unique_ptr<Client> leader, Client::Connect(cluster.node(0).address()));
  uint64_t keys = 0;
  for (int i = 0; i < 1000; ++i) {
    EPD_ASSIGN_OR_RETURN(v1::NodeInfo info, leader->GetNodeInfo());
    keys = info.cluster().store_keys();
    if (keys <= bound) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return keys;
}

std::string Scrape(int port) {
  std::string text;
  const std::string command = fmt::format("curl -s --max-time 5 http://127.0.0.1:{}/metrics", port);
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return text;
  char buffer[4096];
  while (size_t n = fread(buffer, 1, sizeof(buffer), pipe)) text.append(buffer, n);
  pclose(pipe);
  return text;
}

}  // namespace epd::testing
