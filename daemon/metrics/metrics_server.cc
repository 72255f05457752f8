#include "daemon/metrics/metrics_server.h"

#include <fmt/format.h>
#include <prometheus/collectable.h>
#include <prometheus/exposer.h>
#include <prometheus/registry.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <functional>
#include <mutex>
#include <set>
#include <thread>

#include "daemon/metrics/op_series.h"

namespace epd::metrics {
namespace {

using Labels = std::vector<prometheus::ClientMetric::Label>;

prometheus::MetricFamily Family(std::string name, std::string help, prometheus::MetricType type) {
  prometheus::MetricFamily family;
  family.name = std::move(name);
  family.help = std::move(help);
  family.type = type;
  return family;
}

void AddValue(prometheus::MetricFamily& family, double value, Labels labels = {}) {
  prometheus::ClientMetric metric;
  metric.label = std::move(labels);
  if (family.type == prometheus::MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  family.metric.push_back(std::move(metric));
}

// Reads the engine's state at scrape time.
class EngineCollector final : public prometheus::Collectable {
 public:
  // `prune`: called with the engine's groups at each scrape and at each PruneNow
  // (OpSeries::Prune).
  using Prune = std::function<void(const std::set<std::string, std::less<>>& live)>;
  EngineCollector(BuildInfo build, Prune prune)
      : build_(std::move(build)), prune_(std::move(prune)) {}

  void Attach(const Engine* engine) {
    std::lock_guard lock(mutex_);
    engine_ = engine;
    if (engine != nullptr) node_ = engine->DescribeNode();
  }

  // Between scrapes (or with nothing scraping at all).
  void PruneNow() const {
    std::lock_guard lock(mutex_);
    if (engine_ != nullptr) PruneGone(engine_->ListGroups());
  }

  std::vector<prometheus::MetricFamily> Collect() const override {
    using prometheus::MetricType;
    std::vector<prometheus::MetricFamily> out;
    std::lock_guard lock(mutex_);

    auto uptime = Family("epd_uptime_seconds", "Seconds since the daemon started.", MetricType::Gauge);
    AddValue(uptime, std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count());
    out.push_back(std::move(uptime));

    auto build = Family("epd_build_info", "Constant 1, labelled with what this epd was built with.",
                        MetricType::Gauge);
    AddValue(build, 1,
             {{"backend", node_.backend},
              {"cuda", build_.cuda},
              {"nccl", node_.nccl_version},
              {"version", build_.version}});
    out.push_back(std::move(build));
    if (engine_ == nullptr) return out;

    const EngineStats stats = engine_->Stats();
    auto gauge = [&](const char* name, const char* help, double value) {
      auto family = Family(name, help, MetricType::Gauge);
      AddValue(family, value);
      out.push_back(std::move(family));
    };
    auto counter = [&](const char* name, const char* help, double value) {
      auto family = Family(name, help, MetricType::Counter);
      AddValue(family, value);
      out.push_back(std::move(family));
    };
    gauge("epd_sessions_open", "Sessions open now.", static_cast<double>(stats.sessions_open));
    counter("epd_sessions_opened_total", "Sessions opened since start.",
            static_cast<double>(stats.sessions_total));
    gauge("epd_registered_buffers", "Buffers registered by open sessions.",
          static_cast<double>(stats.registered_buffers));
    gauge("epd_registered_bytes", "Bytes of the buffers registered by open sessions.",
          static_cast<double>(stats.registered_bytes));
    counter("epd_allocations_total", "Allocations the backend made.",
            static_cast<double>(stats.allocations));
    counter("epd_frees_total", "Allocations the backend freed.", static_cast<double>(stats.frees));
    gauge("epd_allocated_bytes", "Bytes the backend holds allocated now.",
          static_cast<double>(stats.live_bytes));

    auto handles = Family("epd_handle_bytes", "Bytes of handle receive regions on each rank.",
                          MetricType::Gauge);
    for (size_t rank = 0; rank < stats.handle_bytes_per_rank.size(); ++rank) {
      const std::string gpu =
          rank < node_.gpus.size() ? std::to_string(node_.gpus[rank].index) : "";
      AddValue(handles, static_cast<double>(stats.handle_bytes_per_rank[rank]),
               {{"gpu", gpu}, {"rank", std::to_string(rank)}});
    }
    out.push_back(std::move(handles));
    AddClusterFamilies(out);
    const std::vector<GroupSummary> groups = engine_->ListGroups();
    AddGroupTransportFamilies(groups, out);
    PruneGone(groups);
    return out;
  }

 private:
  // The op series of groups `groups` does not list any more.
  void PruneGone(const std::vector<GroupSummary>& groups) const {
    std::set<std::string, std::less<>> live;
    for (const GroupSummary& group : groups) live.insert(group.config.name);
    prune_(live);
  }

  // Groups that span daemons: one series per group rank hosted here (ListGroups' transport).
  static void AddGroupTransportFamilies(const std::vector<GroupSummary>& groups,
                                        std::vector<prometheus::MetricFamily>& out) {
    using prometheus::MetricType;
    auto formed = Family("epd_group_transport_formed",
                         "1 while the group rank's communicator (NCCL or gloo) with the other "
                         "daemons is formed.",
                         MetricType::Gauge);
    auto failures = Family("epd_group_transport_failures_total",
                           "Formations and exchanges of the group rank's communicator that failed.",
                           MetricType::Counter);
    for (const GroupSummary& group : groups) {
      for (const RankTransportState& rank : group.transport) {
        const Labels labels = {{"group", group.config.name},
                               {"group_rank", std::to_string(rank.group_rank)}};
        AddValue(formed, rank.formed ? 1 : 0, labels);
        AddValue(failures, static_cast<double>(rank.failures), labels);
      }
    }
    if (formed.metric.empty()) return;
    out.push_back(std::move(formed));
    out.push_back(std::move(failures));
  }

  // Multi-node: one series per peer node (the cluster view is read at each scrape).
  void AddClusterFamilies(std::vector<prometheus::MetricFamily>& out) const {
    using prometheus::MetricType;
    const NodeDescription now = engine_->DescribeNode();
    if (!now.cluster.has_value()) return;
    auto up = Family("epd_cluster_node_up",
                     "1 while the node's heartbeats reach the leader (the leader: always).",
                     MetricType::Gauge);
    auto joins = Family("epd_cluster_node_joins_total",
                        "Times the node rank joined the deployment (restarts + 1).",
                        MetricType::Counter);
    auto failures = Family("epd_cluster_transport_failures_total",
                           "Group exchanges with the node that this daemon saw fail.",
                           MetricType::Counter);
    auto bytes = Family("epd_cluster_transport_bytes_total",
                        "Group payload bytes this daemon exchanged with the node's ranks.",
                        MetricType::Counter);
    for (const ClusterMember& member : now.cluster->members) {
      const Labels labels = {{"node", std::to_string(member.node_rank)}};
      AddValue(up, member.state == NodeState::kUp ? 1 : 0, labels);
      AddValue(joins, static_cast<double>(member.joins), labels);
      AddValue(failures, static_cast<double>(member.transport_failures), labels);
      const std::string node = std::to_string(member.node_rank);
      AddValue(bytes, static_cast<double>(member.bytes_sent),
               {{"node", node}, {"direction", "sent"}});
      AddValue(bytes, static_cast<double>(member.bytes_received),
               {{"node", node}, {"direction", "received"}});
    }
    auto store = Family("epd_cluster_store_keys",
                        "Keys in the leader's rendezvous store (flat while groups re-form).",
                        MetricType::Gauge);
    AddValue(store, static_cast<double>(now.cluster->store_keys), {});
    auto refused = Family("epd_cluster_refused_calls_total",
                          "Calls the leader's cluster port refused: a wrong deployment token, "
                          "or a node that does not fit the deployment.",
                          MetricType::Counter);
    AddValue(refused, static_cast<double>(now.cluster->refused_calls), {});
    out.push_back(std::move(up));
    out.push_back(std::move(joins));
    out.push_back(std::move(failures));
    out.push_back(std::move(bytes));
    out.push_back(std::move(refused));
    out.push_back(std::move(store));
  }

  const BuildInfo build_;
  const Prune prune_;
  const std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
  mutable std::mutex mutex_;
  const Engine* engine_ = nullptr;
  NodeDescription node_;
};

}  // namespace

class MetricsServer::Impl {
 public:
  Impl(const std::string& address, BuildInfo build, std::chrono::milliseconds group_retention)
      : registry_(std::make_shared<prometheus::Registry>()),
        ops_(*registry_, group_retention),
        engine_collector_(std::make_shared<EngineCollector>(
            std::move(build),
            [this](const std::set<std::string, std::less<>>& live) {
              ops_.Prune(live, OpSeries::Clock::now());
            })),
        exposer_(address, /*num_threads=*/1),
        pruner_([this, period = PrunePeriod(group_retention)] { PruneLoop(period); }) {
    // In this order at every scrape: the op series first, so a group's last counts are
    // exposed by the scrape whose pruning then drops them.
    exposer_.RegisterCollectable(registry_);
    exposer_.RegisterCollectable(engine_collector_);
  }
  ~Impl() {
    {
      std::lock_guard lock(stop_mu_);
      stopping_ = true;
    }
    stop_changed_.notify_all();
    pruner_.join();
  }

  // A daemon nobody scrapes prunes too: a destroyed group's series go between the retention
  // and the retention + this period after it (scrapes may prune sooner).
  static std::chrono::milliseconds PrunePeriod(std::chrono::milliseconds retention) {
    return std::clamp(retention, std::chrono::milliseconds(100), std::chrono::milliseconds(10'000));
  }
  void PruneLoop(std::chrono::milliseconds period) {
    std::unique_lock lock(stop_mu_);
    while (!stop_changed_.wait_for(lock, period, [this] { return stopping_; })) {
      engine_collector_->PruneNow();
    }
  }

  std::shared_ptr<prometheus::Registry> registry_;
  OpSeries ops_;
  std::shared_ptr<EngineCollector> engine_collector_;
  // Destroyed before the collectors: no scrape runs while they go.
  prometheus::Exposer exposer_;
  std::mutex stop_mu_;
  std::condition_variable stop_changed_;
  bool stopping_ = false;
  std::thread pruner_;  // last: starts once everything it uses exists
};

StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& address, BuildInfo build, std::chrono::milliseconds group_retention) {
  try {
    return std::unique_ptr<MetricsServer>(
        new MetricsServer(std::make_unique<Impl>(address, std::move(build), group_retention)));
  } catch (const std::exception& error) {
    return UnavailableError("metrics_listen = \"{}\": cannot serve /metrics: {}", address,
                            error.what());
  }
}

MetricsServer::MetricsServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
MetricsServer::~MetricsServer() = default;

int MetricsServer::port() const {
  const auto ports = impl_->exposer_.GetListeningPorts();
  return ports.empty() ? 0 : ports.front();
}

void MetricsServer::AttachEngine(const Engine* engine) { impl_->engine_collector_->Attach(engine); }
void MetricsServer::DetachEngine() { impl_->engine_collector_->Attach(nullptr); }

void MetricsServer::OnOpFinished(const OpRecord& op) { impl_->ops_.Record(op); }

}  // namespace epd::metrics
