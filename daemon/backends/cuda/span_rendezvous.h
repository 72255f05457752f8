// SpanRendezvous: how the daemons of a group that spans nodes on the cuda backend agree, through
// the leader's key-value store (daemon/core/cluster.h), on one NCCL communicator incarnation:
// its generation and its unique id. No NCCL and no CUDA here (the unit tests drive it with an
// in-memory store); span_comm.h does the NCCL side.
//
// Keys, under TransportKeyPrefix("nccl", group) ("epd/nccl/<group>/"): "generation" (an
// integer that only grows), and per generation g "g<g>/id" (the root's config line, a newline,
// the unique id in hex) and "g<g>/formed/node<n>" (node n formed it); the leader drops a
// generation's keys once the integer moved past it, which a failure or the group's destruction
// on any member does.
//
// Rule (the cpu backend's, daemon/backends/cpu/gloo_rank_link.h): a formation uses the stored
// generation, raised first to this daemon's floor; a failure (formation or op) raises the
// floor and the stored generation past the failed one, so every member forms afresh at its
// next op; a fresh rendezvous (the group created on this daemon, again or for the first time,
// or the daemon restarted) starts past any generation its node formed before. The root,
// the daemon hosting group rank 0, creates the unique id; the others wait for it (bounded)
// and check that the root created the group with the same config.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "common/status.h"
#include "daemon/core/cluster.h"
#include "daemon/core/group_config.h"

namespace epd::cuda {

class SpanRendezvous {
 public:
  using Clock = std::chrono::steady_clock;
  SpanRendezvous(const GroupConfig& config, ClusterStore& store);

  // The daemon hosting group rank 0 creates each generation's unique id.
  bool hosts_root() const { return config_.NodeOf(0) == config_.span.node; }
  // The generation the next formation uses (stored in the store when it was lower).
  StatusOr<int64_t> NextGeneration();
  // Root: publishes generation `generation`'s unique id (raw bytes).
  Status Publish(int64_t generation, std::string_view unique_id);
  // Others: the root's unique id of `generation`, polled until `deadline`. FAILED_PRECONDITION
  // when the root's config differs; UNAVAILABLE naming the root's node on timeout, when the
  // generation moved past `generation` (a member failed it) or when `stopped` says so.
  StatusOr<std::string> Fetch(int64_t generation, Clock::time_point deadline,
                              const std::function<bool()>& stopped);
  Status MarkFormed(int64_t generation);
  // The group was destroyed on this daemon: the leader drops the keys of the generation it
  // formed last, and all of the name's once no node uses it (RetireGeneration).
  void Retire();
  // Generation `failed` is dead: the next formation of every member uses a later one.
  void Break(int64_t failed);

  static std::string ToHex(std::string_view bytes);
  static StatusOr<std::string> FromHex(std::string_view hex);

 private:
  std::string Prefix() const;  // of every key of this group's communicators
  std::string GenerationKey() const { return GenerationIntegerKey(Prefix()); }
  std::string IdKey(int64_t generation) const {
    return GenerationKeysPrefix(Prefix(), generation) + "id";
  }

  const GroupConfig config_;
  ClusterStore& store_;
  bool first_formation_ = true;  // NextGeneration not called yet
  int64_t floor_ = 0;
  int64_t last_formed_ = -1;  // MarkFormed's last generation
};

}  // namespace epd::cuda
