// The daemons epd-bench's daemon modes talk to: one daemon owning every rank (its GPUs, or
// --cpu-ranks), or a deployment of `nodes` daemons on this host, ranks / nodes each, joined
// over loopback (a private token file, a free leader port) so that the bench's groups span
// them: NCCL between cuda daemons, gloo between cpu ones.
//
// On the cuda backend each node gets GPUs of its own (CUDA_VISIBLE_DEVICES) when the host has
// one per rank; else every node runs its one rank on GPU 0 and NCCL is told they are separate
// hosts (NCCL_HOSTID, P2P and SHM off: its socket transport). `network_path` forces NCCL's
// network transport between nodes with GPUs of their own too (P2P and SHM off), as between
// hosts.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "tests/bench/process_util.h"

namespace epd::bench {

struct DaemonsOptions {
  std::string epd_path;
  std::string backend;  // "cpu" or "cuda"
  int ranks = 0;
  int nodes = 1;
  int visible_gpus = 0;  // cuda: the GPUs this host shows epd-bench
  bool network_path = false;
  std::vector<std::string> extra;  // flags for every daemon
  std::chrono::milliseconds start_timeout{120'000};
};

// Where a group rank's frontend runs: the daemon it talks to, the rank its session binds
// there, and on the cuda backend the CUDA_VISIBLE_DEVICES it runs with ("" = epd-bench's own)
// and the device it allocates on, as it numbers them.
struct FrontendSeat {
  std::string address;
  int session_rank = 0;
  std::string visible_devices;
  int device = 0;
};

// OK when `nodes` daemons can share `ranks` evenly (at least one rank each); else
// INVALID_ARGUMENT naming both flags.
Status CheckNodeSplit(int ranks, int nodes);

class BenchDaemons {
 public:
  // Checks the split (ranks a multiple of nodes, one GPU per rank or one rank per node on a
  // shared GPU) before starting anything; starts the leader first.
  static StatusOr<std::unique_ptr<BenchDaemons>> Start(const DaemonsOptions& options);
  // A daemon already running at `address` (every rank's seat is there, rank r on GPU r).
  static std::unique_ptr<BenchDaemons> Connect(const std::string& address);

  ~BenchDaemons();

  FrontendSeat SeatOf(int rank) const;
  int nodes() const { return nodes_; }
  bool spanning() const { return nodes_ > 1; }
  // Every started daemon's log, headed by its node rank.
  std::string ReadLogs() const;

 private:
  BenchDaemons() = default;
  Status StartNode(const DaemonsOptions& options, int node);

  int nodes_ = 1;
  int ranks_per_node_ = 0;
  bool shared_gpu_ = false;  // cuda, several nodes: every rank on GPU 0
  bool cuda_ = false;
  std::string connect_address_;
  std::string dir_, token_file_, leader_;
  std::vector<std::unique_ptr<Daemon>> daemons_;
};

}  // namespace epd::bench
