// OpSeries: op metrics per group, and when a destroyed group's series go.
#include "daemon/metrics/op_series.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

namespace epd::metrics {
namespace {

using std::chrono::milliseconds;

OpRecord Op(std::string_view kind, std::string_view group, int rank,
            StatusCode code = StatusCode::kOk) {
  OpRecord op;
  op.kind = kind;
  op.group = group;
  op.rank = rank;
  op.code = code;
  op.host_time = std::chrono::microseconds(40);
  op.payload_bytes = kind == "update" ? 0 : 4096;
  return op;
}

// Series (of any family) labelled group=`group`, and the value of epd_ops_total's OK dispatches
// on rank 0 of it (-1 when absent).
struct Seen {
  int series = 0;
  double ok_dispatches = -1;
};
Seen SeenOf(prometheus::Registry& registry, const std::string& group) {
  Seen seen;
  for (const prometheus::MetricFamily& family : registry.Collect()) {
    for (const prometheus::ClientMetric& metric : family.metric) {
      bool of_group = false, ok = false, dispatch = false, rank0 = false;
      for (const auto& label : metric.label) {
        of_group |= label.name == "group" && label.value == group;
        ok |= label.name == "code" && label.value == "OK";
        dispatch |= label.name == "op" && label.value == "dispatch";
        rank0 |= label.name == "rank" && label.value == "0";
      }
      if (!of_group) continue;
      ++seen.series;
      if (family.name == "epd_ops_total" && ok && dispatch && rank0) {
        seen.ok_dispatches = metric.counter.value;
      }
    }
  }
  return seen;
}

TEST(OpSeriesTest, ADestroyedGroupsSeriesGoOnceItWasGoneForTheRetention) {
  prometheus::Registry registry;
  OpSeries series(registry, milliseconds(1'000));
  for (int rank = 0; rank < 2; ++rank) {
    series.Record(Op("update", "a", rank));
    series.Record(Op("dispatch", "a", rank));
    series.Record(Op("combine", "a", rank, StatusCode::kDeadlineExceeded));
  }
  series.Record(Op("dispatch", "b", 0));
  series.Record(Op("dispatch", "b", 0));
  // ops: 3 x 2; durations: 3 x 2; payload: 2 x 2; timeouts: 1 x 2.
  EXPECT_EQ(SeenOf(registry, "a").series, 18);
  const auto t0 = OpSeries::Clock::now();
  series.Prune({"a", "b"}, t0);
  series.Prune({"b"}, t0 + milliseconds(10));  // a is gone from here on
  series.Prune({"b"}, t0 + milliseconds(1'009));
  EXPECT_EQ(SeenOf(registry, "a").series, 18);
  EXPECT_EQ(SeenOf(registry, "a").ok_dispatches, 1);
  series.Prune({"b"}, t0 + milliseconds(1'010));
  EXPECT_EQ(SeenOf(registry, "a").series, 0);
  EXPECT_EQ(SeenOf(registry, "b").ok_dispatches, 2);
  EXPECT_EQ(series.groups(), 1u);

  // Gone, then made again under its name before the retention ran out: its series stay, and its
  // clock starts again when it goes next.
  const auto t1 = t0 + milliseconds(5'000);
  series.Prune({}, t1);
  series.Prune({"b"}, t1 + milliseconds(900));
  series.Prune({}, t1 + milliseconds(1'500));
  series.Prune({}, t1 + milliseconds(2'400));
  EXPECT_EQ(SeenOf(registry, "b").ok_dispatches, 2);
  series.Prune({}, t1 + milliseconds(2'500));
  EXPECT_EQ(SeenOf(registry, "b").series, 0);
  EXPECT_EQ(series.groups(), 0u);

  // An op that finished after its group was pruned counts from zero, and goes the same way.
  series.Record(Op("dispatch", "a", 0));
  EXPECT_EQ(SeenOf(registry, "a").ok_dispatches, 1);
  series.Prune({}, t1 + milliseconds(3'000));
  series.Prune({}, t1 + milliseconds(4'000));
  EXPECT_EQ(SeenOf(registry, "a").series, 0);
}

// Ops finish on worker threads while scrapes prune: a series is never removed while an op
// bumps it (under ASan/TSan this would be a use after free or a race).
TEST(OpSeriesTest, OpsFinishingWhileScrapesPruneAreSafe) {
  prometheus::Registry registry;
  OpSeries series(registry, milliseconds(0));
  std::atomic<bool> stop{false};
  std::vector<std::thread> workers;
  for (int w = 0; w < 4; ++w) {
    workers.emplace_back([&, w] {
      const std::string group = "g" + std::to_string(w);
      while (!stop.load()) series.Record(Op("dispatch", group, w));
    });
  }
  for (int scrape = 0; scrape < 2'000; ++scrape) {
    series.Prune({}, OpSeries::Clock::now());
    (void)registry.Collect();
  }
  stop = true;
  for (std::thread& worker : workers) worker.join();
  series.Prune({}, OpSeries::Clock::now());
  EXPECT_EQ(series.groups(), 0u);
  EXPECT_EQ(SeenOf(registry, "g0").series, 0);
}

}  // namespace
}  // namespace epd::metrics
