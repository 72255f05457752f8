#include "daemon/backends/cpu/gloo_rank_link.h"

#include <fmt/ranges.h>
#include <gloo/rendezvous/context.h>
#include <gloo/transport/unbound_buffer.h>

#include <cstring>
#include <exception>
#include <functional>
#include <set>
#include <stdexcept>

#include "daemon/backends/cpu/gloo_store.h"
#include "daemon/core/log.h"

namespace epd {

GlooRankLink::GlooRankLink(const GroupConfig& config, int group_rank, ClusterStore& cluster,
                           std::shared_ptr<gloo::transport::Device> device,
                           std::shared_ptr<TransportRecord> record)
    : config_(config),
      rank_(group_rank),
      cluster_(cluster),
      device_(std::move(device)),
      record_(std::move(record)) {}

GlooRankLink::~GlooRankLink() = default;

void GlooRankLink::RetireAll(const std::vector<std::unique_ptr<GlooRankLink>>& links) {
  const GlooRankLink* any = nullptr;
  int64_t last_formed = -1;
  for (const auto& link : links) {
    if (link == nullptr) continue;
    if (!link->Stopped().ok()) return;  // shutdown: the daemon goes, not the group
    any = link.get();
    last_formed = std::max(last_formed, link->last_formed_);
  }
  if (any == nullptr) return;
  RetireGeneration(any->cluster_, any->Prefix(), last_formed);
}

std::string GlooRankLink::Prefix() const { return TransportKeyPrefix("group", config_.name); }

std::string GlooRankLink::GenerationKey() const { return GenerationIntegerKey(Prefix()); }

std::string GlooRankLink::FormedKey(int64_t generation, int node) const {
  return FormedGenerationKey(Prefix(), generation, node);
}

void GlooRankLink::Break(int64_t failed_generation) {
  // NOTE: kept open, not closed: closing would reset this rank's connections to live peers,
  // which would then blame this (live) node for their own failed op instead of the dead one.
  if (context_ != nullptr) retired_ = std::move(context_);
  generation_ = -1;
  floor_ = std::max(floor_, failed_generation + 1);
  // Raised at once, so peers still waiting on the failed generation give up early.
  auto raised = cluster_.Max(GenerationKey(), floor_);
  if (!raised.ok()) {
    EPD_LOG(kCpu, warn, "group '{}' rank {}: cannot raise the mesh generation: {}", config_.name,
            rank_, raised.status().ToString());
  }
}

Status GlooRankLink::CheckConfigs(const std::string& prefix, std::chrono::milliseconds timeout,
                                  int64_t generation) {
  const std::string mine = config_.ToString();
  EPD_RETURN_IF_ERROR(cluster_.Set(fmt::format("{}config/{}", prefix, rank_), mine));
  // Every rank compares every rank's config with its own, rank 0's first: a daemon whose
  // config names a different world size still finds rank 0's and fails at once.
  std::vector<int> compare_with;
  for (int r = 0; r < config_.world_size(); ++r) {
    if (r != rank_) compare_with.push_back(r);
  }
  GlooStore store(cluster_, prefix, timeout, [this, generation] {
    if (!Stopped().ok()) return true;
    auto current = cluster_.Get(GenerationKey());
    return current.ok() && ParseGeneration(*current) > generation;
  });
  for (int r : compare_with) {
    const std::string key = fmt::format("config/{}", r);
    try {
      store.wait({key});
      const std::vector<char> theirs_bytes = store.get(key);
      const std::string theirs(theirs_bytes.begin(), theirs_bytes.end());
      if (theirs != mine) {
        const int node = config_.NodeOf(r);
        return FailedPreconditionError(
            "group '{}': the daemons created it with different configs: node {} (group rank {}) "
            "has {}, node {} has {}; create it with the same config on every node",
            config_.name, node, r, theirs, config_.span.node, mine);
      }
    } catch (const std::exception& error) {
      return UnavailableError("group '{}' rank {}: waiting for group rank {} (node {}) to create "
                              "the group: {}",
                              config_.name, rank_, r, config_.NodeOf(r), error.what());
    }
  }
  return OkStatus();
}

void GlooRankLink::Cancel(const Status& reason, bool permanent) {
  std::lock_guard lock(cancel_mutex_);
  ++cancels_;
  last_cancel_ = reason;
  if (permanent) stopped_ = reason;
  for (gloo::transport::UnboundBuffer* buffer : in_flight_) {
    buffer->abortWaitRecv();
    buffer->abortWaitSend();
  }
}

Status GlooRankLink::Stopped() const {
  std::lock_guard lock(cancel_mutex_);
  return stopped_;
}

Status GlooRankLink::Form(std::chrono::milliseconds timeout) {
  EPD_RETURN_IF_ERROR(Stopped());
  EPD_RETURN_IF_ERROR(CheckNoMemberDown(cluster_.View(), config_));
  EPD_RETURN_IF_ERROR(AwaitMembersJoined(cluster_, config_,
                                         std::chrono::steady_clock::now() + timeout,
                                         [this] { return !Stopped().ok(); }));
  int64_t floor = floor_;
  if (first_formation_) {
    // A fresh link (the group created on this daemon, again or for the first time, or the
    // daemon restarted) never joins a generation its node formed before.
    EPD_ASSIGN_OR_RETURN(const int64_t fresh,
                         FirstFormationFloor(cluster_, Prefix(), config_.span.node));
    floor = std::max(floor, fresh);
    first_formation_ = false;
  }
  EPD_ASSIGN_OR_RETURN(int64_t generation, cluster_.Max(GenerationKey(), floor));
  const std::string prefix = GenerationKeysPrefix(Prefix(), generation);
  EPD_LOG(kCpu, debug, "group '{}' rank {}: forming the mesh of generation {}", config_.name,
          rank_, generation);
  Status agreed = CheckConfigs(prefix, timeout, generation);
  if (!agreed.ok()) {
    if (agreed.code() != StatusCode::kFailedPrecondition) Break(generation);
    return agreed;
  }
  auto context = std::make_shared<gloo::rendezvous::Context>(rank_, config_.world_size());
  context->setTimeout(timeout);
  GlooStore store(cluster_, prefix + "mesh/", timeout, [this, generation] {
    if (!Stopped().ok()) return true;
    auto current = cluster_.Get(GenerationKey());
    return current.ok() && ParseGeneration(*current) > generation;
  });
  try {
    context->connectFullMesh(store, device_);
  } catch (const std::exception& error) {
    Break(generation);
    return UnavailableError("group '{}' rank {}: forming the mesh (generation {}) failed: {}",
                            config_.name, rank_, generation, error.what());
  }
  Status recorded = cluster_.Set(FormedKey(generation, config_.span.node), "1");
  if (!recorded.ok()) {
    Break(generation);
    return recorded.WithContext(fmt::format("group '{}' rank {}", config_.name, rank_));
  }
  context_ = std::move(context);
  retired_.reset();
  generation_ = generation;
  last_formed_ = generation;
  next_slot_ = 0;
  if (record_ != nullptr) record_->Formed(rank_, generation);
  EPD_LOG(kCpu, info, "group '{}' rank {}: mesh of {} ranks formed (generation {})", config_.name,
          rank_, config_.world_size(), generation);
  return OkStatus();
}

Status GlooRankLink::Exchange(const std::vector<std::span<const char>>& send,
                              const std::vector<std::span<char>>& recv,
                              std::chrono::milliseconds timeout, std::string_view phase) {
  Status exchanged = ExchangeOnMesh(send, recv, timeout, phase);
  if (!exchanged.ok() && record_ != nullptr) record_->Failed(rank_, exchanged);
  return exchanged;
}

Status GlooRankLink::ExchangeOnMesh(const std::vector<std::span<const char>>& send,
                                    const std::vector<std::span<char>>& recv,
                                    std::chrono::milliseconds timeout, std::string_view phase) {
  EPD_RETURN_IF_ERROR(Stopped());
  uint64_t cancels_before = 0;
  {
    std::lock_guard lock(cancel_mutex_);
    cancels_before = cancels_;
  }
  if (context_ == nullptr) EPD_RETURN_IF_ERROR(Form(timeout));
  const int world = config_.world_size();
  const uint64_t slot = next_slot_++;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  auto remaining = [deadline] {
    return std::max(std::chrono::milliseconds(1),
                    std::chrono::duration_cast<std::chrono::milliseconds>(
                        deadline - std::chrono::steady_clock::now()));
  };
  // NOTE: every peer is handled on its own: a dead peer fails its own transfers only, so the
  // live peers still get this rank's messages and blame the dead node, not this one.
  std::vector<std::string> failures(world);
  auto attempt = [&failures](int p, const std::function<void()>& step) {
    if (!failures[p].empty()) return;
    try {
      step();
    } catch (const std::exception& error) {
      failures[p] = error.what();
    }
  };
  std::vector<std::unique_ptr<gloo::transport::UnboundBuffer>> receiving(world), sending(world);
  for (int p = 0; p < world; ++p) {
    if (p == rank_ || recv[p].empty()) continue;
    attempt(p, [&] {
      receiving[p] = context_->createUnboundBuffer(recv[p].data(), recv[p].size());
      receiving[p]->recv(p, slot);
    });
  }
  for (int p = 0; p < world; ++p) {
    if (p == rank_ || send[p].empty()) continue;
    attempt(p, [&] {
      // gloo only reads a buffer it sends.
      sending[p] = context_->createUnboundBuffer(const_cast<char*>(send[p].data()), send[p].size());
      sending[p]->send(p, slot);
    });
  }
  if (!send[rank_].empty()) std::memcpy(recv[rank_].data(), send[rank_].data(), send[rank_].size());
  Status cancelled;
  {
    std::lock_guard lock(cancel_mutex_);
    for (int p = 0; p < world; ++p) {
      if (receiving[p] != nullptr) in_flight_.push_back(receiving[p].get());
      if (sending[p] != nullptr) in_flight_.push_back(sending[p].get());
    }
    // A cancel since this exchange began (maybe before its buffers were posted) applies too.
    if (cancels_ != cancels_before) cancelled = last_cancel_;
  }
  EPD_LOG(kCpu, debug, "group '{}' rank {}: {}: waiting for the peers", config_.name, rank_,
          phase);
  // gloo answers false when a wait was aborted (Cancel).
  auto wait = [&](bool completed) {
    if (!completed) throw std::runtime_error("cancelled");
  };
  for (int p = 0; p < world && cancelled.ok(); ++p) {
    if (receiving[p] != nullptr) attempt(p, [&] { wait(receiving[p]->waitRecv(remaining())); });
  }
  for (int p = 0; p < world && cancelled.ok(); ++p) {
    if (sending[p] != nullptr) attempt(p, [&] { wait(sending[p]->waitSend(remaining())); });
  }
  {
    std::lock_guard lock(cancel_mutex_);
    in_flight_.clear();
    if (cancelled.ok() && cancels_ != cancels_before) cancelled = last_cancel_;
  }
  if (!cancelled.ok()) {
    const int64_t generation = generation_;
    receiving.clear();
    sending.clear();
    Break(generation);
    return Status(cancelled.code(), fmt::format("group '{}': {} stopped: {}", config_.name, phase,
                                                cancelled.message()));
  }
  std::vector<int> failed;
  for (int p = 0; p < world; ++p) {
    if (!failures[p].empty()) {
      failed.push_back(p);
    } else if (p != rank_) {
      cluster_.ReportTransportBytes(config_.NodeOf(p), send[p].size(), recv[p].size());
    }
  }
  if (failed.empty()) return OkStatus();

  std::set<int> nodes;
  std::string detail;
  for (int p : failed) {
    nodes.insert(config_.NodeOf(p));
    detail += fmt::format("{}group rank {} on node {}: {}", detail.empty() ? "" : "; ", p,
                          config_.NodeOf(p), failures[p]);
  }
  for (int node : nodes) cluster_.ReportTransportFailure(node);
  const int64_t generation = generation_;
  receiving.clear();
  sending.clear();
  Break(generation);
  const std::string node_list = fmt::format("{}", fmt::join(nodes, ", "));
  EPD_LOG(kCpu, warn, "group '{}' rank {}: {} failed with {}", config_.name, rank_, phase, detail);
  return UnavailableError(
      "group '{}': {} failed on node {} (down or unreachable?): {}; the group re-forms at its "
      "next op once every node is back",
      config_.name, phase, node_list, detail);
}

}  // namespace epd
