// GlooRankLink: one group rank's gloo mesh with every rank of a group that spans daemons
// (README, "Multi-node"). gloo does the transport (TCP); the daemons exchange the mesh's
// addresses through the leader's key-value store (gloo_store.h).
//
// Formation, on the rank's stream at its first op and after any failure, bounded by the op
// timeout: the rank reads the group's generation from the store (raised past every generation
// that failed, and by a restarted node past the last one its predecessor formed), checks that every daemon created
// the group with the same config (FAILED_PRECONDITION naming the node and both configs), and
// connects the mesh under that generation's keys. A failure (a peer died or timed out) drops
// the mesh and raises the generation, so every member re-forms a fresh mesh at its next op:
// the group recovers by itself once the peer daemon is back and has created the group again.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "daemon/core/cluster.h"
#include "daemon/core/group_config.h"
#include "daemon/core/transport_record.h"

namespace gloo {
class Context;
namespace transport {
class Device;
class UnboundBuffer;
}  // namespace transport
}  // namespace gloo

namespace epd {

class GlooRankLink {
 public:
  // `record` (may be null) is told every formation and every failed exchange.
  GlooRankLink(const GroupConfig& config, int group_rank, ClusterStore& cluster,
               std::shared_ptr<gloo::transport::Device> device,
               std::shared_ptr<TransportRecord> record = nullptr);
  ~GlooRankLink();

  // The group of `links` (this daemon's ranks of it; null where another daemon hosts the rank)
  // was destroyed: unless Cancel(permanent) came first (shutdown), the leader drops the keys of
  // the last mesh any of them formed, and all of the name's once no node uses it. One retire
  // for all of them (RetireGeneration; it never waits on the leader), not one per rank.
  static void RetireAll(const std::vector<std::unique_ptr<GlooRankLink>>& links);

  // Sends send[p] to group rank p and receives recv[p] from it, for every p (its own part is
  // copied); the sizes were agreed beforehand (a fixed header, or sizes the headers carried).
  // Forms the mesh first when there is none. UNAVAILABLE naming the peer's group rank and node
  // when a peer's connection broke or it did not answer within `timeout`.
  Status Exchange(const std::vector<std::span<const char>>& send,
                  const std::vector<std::span<char>>& recv, std::chrono::milliseconds timeout,
                  std::string_view phase);

  // Any thread: the exchange in flight (if any) stops waiting now and fails with `reason`
  // (a member's session ended); `permanent` (shutdown): every later one fails too.
  void Cancel(const Status& reason, bool permanent);

 private:
  Status ExchangeOnMesh(const std::vector<std::span<const char>>& send,
                        const std::vector<std::span<char>>& recv, std::chrono::milliseconds timeout,
                        std::string_view phase);
  Status Stopped() const;  // the permanent cancel's reason, or OK
  Status Form(std::chrono::milliseconds timeout);
  Status CheckConfigs(const std::string& prefix, std::chrono::milliseconds timeout,
                      int64_t generation);
  void Break(int64_t failed_generation);
  std::string Prefix() const;  // of every key of this group's meshes (daemon/core/cluster.h)
  std::string GenerationKey() const;
  // Set once a rank of `node` formed the mesh of `generation`.
  std::string FormedKey(int64_t generation, int node) const;

  const GroupConfig config_;
  const int rank_;
  ClusterStore& cluster_;
  std::shared_ptr<gloo::transport::Device> device_;
  const std::shared_ptr<TransportRecord> record_;
  std::shared_ptr<gloo::Context> context_;  // null: no mesh (not formed yet, or broken)
  std::shared_ptr<gloo::Context> retired_;  // the broken mesh, open until the next one forms
  int64_t generation_ = -1;
  int64_t last_formed_ = -1;  // the generation of the last mesh formed, kept after a Break
  int64_t floor_ = 0;  // the next formation uses a generation at least this
  bool first_formation_ = true;  // no formation tried yet (see Form)
  uint64_t next_slot_ = 0;

  mutable std::mutex cancel_mutex_;
  std::vector<gloo::transport::UnboundBuffer*> in_flight_;  // the exchange's buffers
  uint64_t cancels_ = 0;  // Cancel calls so far
  Status last_cancel_;
  Status stopped_;
};

}  // namespace epd
