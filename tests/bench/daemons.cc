#include "tests/bench/daemons.h"

#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include "tests/loopback_port.h"

namespace epd::bench {
namespace {

std::string Range(int first, int count) {
  std::string list;
  for (int i = 0; i < count; ++i) list += (i ? "," : "") + std::to_string(first + i);
  return list;
}

}  // namespace

Status CheckNodeSplit(int ranks, int nodes) {
  if (nodes < 1 || ranks < nodes || ranks % nodes != 0) {
    return InvalidArgumentError("--nodes {} must divide --ranks {} (ranks per node >= 1)", nodes,
                                ranks);
  }
  return OkStatus();
}

StatusOr<std::unique_ptr<BenchDaemons>> BenchDaemons::Start(const DaemonsOptions& options) {
  const int R = options.ranks, N = options.nodes;
  EPD_RETURN_IF_ERROR(CheckNodeSplit(R, N));
  std::unique_ptr<BenchDaemons> d(new BenchDaemons());
  d->nodes_ = N;
  d->ranks_per_node_ = R / N;
  d->cuda_ = options.backend == "cuda";
  if (d->cuda_ && options.visible_gpus < R) {
    // NOTE: NCCL needs one GPU per rank of a daemon; nodes sharing GPU 0 take one rank each.
    if (N == 1 || d->ranks_per_node_ != 1) {
      return InvalidArgumentError(
          "{} ranks need {} GPUs, this host shows {}; on fewer, only one rank per node (--nodes "
          "{}) shares GPU 0",
          R, R, options.visible_gpus, R);
    }
    d->shared_gpu_ = true;
  }
  if (N > 1) {
    std::string dir = "/tmp/epd-bench-cluster-XXXXXX";
    if (mkdtemp(dir.data()) == nullptr) return InternalError("mkdtemp failed");
    d->dir_ = dir;
    d->token_file_ = dir + "/token";
    std::ofstream(d->token_file_) << fmt::format("epd-bench-{}-{}\n", getpid(), std::random_device{}());
    chmod(d->token_file_.c_str(), 0600);
    const int port = FreeLoopbackPort();
    if (port <= 0) return InternalError("no free loopback port for the leader");
    d->leader_ = fmt::format("127.0.0.1:{}", port);
  }
  d->daemons_.resize(N);
  for (int node = 0; node < N; ++node) EPD_RETURN_IF_ERROR(d->StartNode(options, node));
  return d;
}

Status BenchDaemons::StartNode(const DaemonsOptions& options, int node) {
  std::vector<std::string> flags = options.extra;
  std::map<std::string, std::string> env;
  if (cuda_) {
    flags.insert(flags.end(), {"--gpus", Range(0, ranks_per_node_)});
    if (shared_gpu_) {
      env = {{"CUDA_VISIBLE_DEVICES", "0"},
             {"NCCL_HOSTID", fmt::format("epd-bench-node-{}", node)},
             {"NCCL_P2P_DISABLE", "1"},
             {"NCCL_SHM_DISABLE", "1"}};
    } else if (nodes_ > 1) {
      env = {{"CUDA_VISIBLE_DEVICES", Range(node * ranks_per_node_, ranks_per_node_)}};
      if (options.network_path) env.insert({{"NCCL_P2P_DISABLE", "1"}, {"NCCL_SHM_DISABLE", "1"}});
    }
    if (nodes_ > 1) {
      // Both "hosts" are this one; an operator's NCCL_SOCKET_IFNAME wins.
      env.insert({"NCCL_IB_DISABLE", "1"});
      if (std::getenv("NCCL_SOCKET_IFNAME") == nullptr) env.insert({"NCCL_SOCKET_IFNAME", "lo"});
    }
  } else {
    flags.insert(flags.end(), {"--cpu-ranks", std::to_string(ranks_per_node_)});
  }
  if (nodes_ > 1) {
    flags.insert(flags.end(),
                 {"--nodes", std::to_string(nodes_), "--node-rank", std::to_string(node),
                  "--leader", leader_, "--cluster-address", "127.0.0.1", "--cluster-token-file",
                  token_file_});
  }
  ScopedEnv scoped(env);
  auto daemon = Daemon::Start(options.epd_path, options.backend, flags, options.start_timeout);
  if (!daemon.ok()) return daemon.status().WithContext(fmt::format("node {}", node));
  daemons_[node] = std::move(daemon).value();
  return OkStatus();
}

std::unique_ptr<BenchDaemons> BenchDaemons::Connect(const std::string& address) {
  std::unique_ptr<BenchDaemons> d(new BenchDaemons());
  d->connect_address_ = address;
  return d;
}

FrontendSeat BenchDaemons::SeatOf(int rank) const {
  FrontendSeat seat;
  if (!connect_address_.empty()) {
    seat.address = connect_address_;
    seat.session_rank = rank;
    seat.device = rank;
    return seat;
  }
  const int node = rank / ranks_per_node_, local = rank % ranks_per_node_;
  seat.address = daemons_[node]->address();
  seat.session_rank = local;
  seat.device = rank;
  if (cuda_ && nodes_ > 1) {
    // The frontend sees its daemon's GPUs only, numbered as the daemon numbers them.
    seat.visible_devices = shared_gpu_ ? "0" : Range(node * ranks_per_node_, ranks_per_node_);
    seat.device = shared_gpu_ ? 0 : local;
  }
  return seat;
}

BenchDaemons::~BenchDaemons() {
  daemons_.clear();  // stopped before their deployment's token file goes
  if (!dir_.empty()) {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
}

std::string BenchDaemons::ReadLogs() const {
  std::string logs;
  for (size_t node = 0; node < daemons_.size(); ++node) {
    if (daemons_[node] == nullptr) continue;
    if (daemons_.size() > 1) logs += fmt::format("---- node {} ----\n", node);
    logs += daemons_[node]->ReadLog();
  }
  return logs;
}

}  // namespace epd::bench
