// OpSeries: the op metrics, one series per (op, group, rank[, code]), bumped as ops finish:
//
//   epd_ops_total{op,group,rank,code}        ops finished, by status code
//   epd_op_duration_seconds{op,group,rank}   host-observed submit -> done (histogram)
//   epd_payload_bytes_total{op,group,rank}   token bytes dispatched / combined
//   epd_op_timeouts_total{op,group,rank}     ops that hit op_timeout (fence or peer wait)
//
// A group's series go once the group has been gone for `retention` (Prune: at each scrape and,
// scraped or not, every few seconds): frontends that name groups per job or per start would
// otherwise grow /metrics, and the daemon's memory, by dozens of samples per group rank for as
// long as the daemon runs. The retention lets scrapes see a destroyed group's last counts first.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <chrono>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>

#include "daemon/core/engine.h"

namespace epd::metrics {

class OpSeries {
 public:
  using Clock = std::chrono::steady_clock;
  // Registers the four families in `registry`.
  OpSeries(prometheus::Registry& registry, std::chrono::milliseconds retention);

  // The engine's on_op_finished hook: called on worker and completion threads; never blocks
  // on more than this object's mutex.
  void Record(const OpRecord& op);
  // `live`: the groups the engine has now. A group gone from it since `retention` before `now`
  // loses its series; one seen again (made again under its name) keeps them.
  void Prune(const std::set<std::string, std::less<>>& live, Clock::time_point now);
  // Groups with series now (gone ones included until pruned).
  size_t groups() const;

 private:
  struct GroupSeries {
    std::set<prometheus::Counter*> ops, payload, timeouts;
    std::set<prometheus::Histogram*> durations;
    std::optional<Clock::time_point> gone_since;
  };
  void RemoveLocked(GroupSeries& series);

  const std::chrono::milliseconds retention_;
  prometheus::Family<prometheus::Counter>& ops_;
  prometheus::Family<prometheus::Histogram>& durations_;
  prometheus::Family<prometheus::Counter>& payload_;
  prometheus::Family<prometheus::Counter>& timeouts_;
  // Held while a series is added and bumped, so Prune never removes one in use.
  mutable std::mutex mutex_;
  std::map<std::string, GroupSeries, std::less<>> groups_;
};

// Buckets of epd_op_duration_seconds: 25 us .. 10 s.
const std::vector<double>& OpDurationBuckets();

}  // namespace epd::metrics
