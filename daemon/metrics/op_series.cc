#include "daemon/metrics/op_series.h"

namespace epd::metrics {

const std::vector<double>& OpDurationBuckets() {
  static const std::vector<double> buckets = {25e-6,  50e-6, 100e-6, 250e-6, 500e-6, 1e-3,
                                              2.5e-3, 5e-3,  10e-3,  25e-3,  50e-3,  0.1,
                                              0.25,   0.5,   1,      2.5,    5,      10};
  return buckets;
}

OpSeries::OpSeries(prometheus::Registry& registry, std::chrono::milliseconds retention)
    : retention_(retention),
      ops_(prometheus::BuildCounter()
               .Name("epd_ops_total")
               .Help("Ops finished, by op, group, node rank and status code.")
               .Register(registry)),
      durations_(prometheus::BuildHistogram()
                     .Name("epd_op_duration_seconds")
                     .Help("Host-observed op latency, submit to done.")
                     .Register(registry)),
      payload_(prometheus::BuildCounter()
                   .Name("epd_payload_bytes_total")
                   .Help("Token bytes moved by dispatch and combine.")
                   .Register(registry)),
      timeouts_(prometheus::BuildCounter()
                    .Name("epd_op_timeouts_total")
                    .Help("Ops that hit op_timeout waiting for a fence or a peer rank.")
                    .Register(registry)) {}

void OpSeries::Record(const OpRecord& op) {
  const std::string kind(op.kind), group(op.group), rank = std::to_string(op.rank);
  const prometheus::Labels labels{{"op", kind}, {"group", group}, {"rank", rank}};
  std::lock_guard lock(mutex_);
  GroupSeries& series = groups_[group];
  prometheus::Counter& ops =
      ops_.Add({{"op", kind}, {"group", group}, {"rank", rank}, {"code", StatusCodeName(op.code)}});
  ops.Increment();
  series.ops.insert(&ops);
  prometheus::Histogram& duration = durations_.Add(labels, OpDurationBuckets());
  duration.Observe(std::chrono::duration<double>(op.host_time).count());
  series.durations.insert(&duration);
  if (op.payload_bytes > 0) {
    prometheus::Counter& payload = payload_.Add(labels);
    payload.Increment(static_cast<double>(op.payload_bytes));
    series.payload.insert(&payload);
  }
  if (op.code == StatusCode::kDeadlineExceeded) {
    prometheus::Counter& timeouts = timeouts_.Add(labels);
    timeouts.Increment();
    series.timeouts.insert(&timeouts);
  }
}

void OpSeries::Prune(const std::set<std::string, std::less<>>& live, Clock::time_point now) {
  std::lock_guard lock(mutex_);
  for (auto it = groups_.begin(); it != groups_.end();) {
    GroupSeries& series = it->second;
    if (live.count(it->first) > 0) {
      series.gone_since.reset();
      ++it;
      continue;
    }
    if (!series.gone_since.has_value()) series.gone_since = now;
    if (now - *series.gone_since < retention_) {
      ++it;
      continue;
    }
    RemoveLocked(series);
    it = groups_.erase(it);
  }
}

void OpSeries::RemoveLocked(GroupSeries& series) {
  for (prometheus::Counter* counter : series.ops) ops_.Remove(counter);
  for (prometheus::Histogram* histogram : series.durations) durations_.Remove(histogram);
  for (prometheus::Counter* counter : series.payload) payload_.Remove(counter);
  for (prometheus::Counter* counter : series.timeouts) timeouts_.Remove(counter);
}

size_t OpSeries::groups() const {
  std::lock_guard lock(mutex_);
  return groups_.size();
}

}  // namespace epd::metrics
