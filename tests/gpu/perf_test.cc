// Throughput of the standard configuration (tests/bench/README.md: H=7168, K=8, E=256, T=128 bf16,
// expert-major, low latency) on every visible GPU (2 to 8). Prints logical bandwidth
// (valid selections x H x bytes / time, per rank) and per-op GPU time; the project's target on
// 4 x H100 is dispatch >= 300 GB/s and combine >= 250 GB/s. Fails only on errors, not speed.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "tests/gpu/moe_harness.h"

namespace epd::gputest {
namespace {

struct Timing {
  double mean_us = 0, median_us = 0, p99_us = 0;
  double enqueue_us = 0;  // host time per op call (the slowest rank's thread)
};

// Enqueues `iterations` ops back to back on every rank with an event between consecutive
// ops, then reads per-op GPU time on each rank; returns the slowest rank's figures.
// `streams`: each rank's daemon stream (its handle's lane).
Timing TimeOps(const std::vector<cudaStream_t>& streams, int iterations,
               const std::function<Status(int)>& op) {
  const int ranks = static_cast<int>(streams.size());
  std::vector<std::vector<cudaEvent_t>> events(ranks, std::vector<cudaEvent_t>(iterations + 1));
  for (int r = 0; r < ranks; ++r) {
    cudaSetDevice(r);
    for (auto& e : events[r]) cudaEventCreate(&e);
  }
  std::vector<double> enqueue_us(ranks);
  OnEveryRank(ranks, [&](int r) {
    cudaSetDevice(r);
    cudaStream_t stream = streams[r];
    cudaEventRecord(events[r][0], stream);
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < iterations; ++i) {
      Status s = op(r);
      EXPECT_TRUE(s.ok()) << s.ToString();
      cudaEventRecord(events[r][i + 1], stream);
    }
    enqueue_us[r] =
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
            .count() /
        iterations;
  });
  Timing worst;
  for (int r = 0; r < ranks; ++r) {
    cudaSetDevice(r);
    cudaEventSynchronize(events[r][iterations]);
    std::vector<double> us(iterations);
    for (int i = 0; i < iterations; ++i) {
      float ms = 0;
      cudaEventElapsedTime(&ms, events[r][i], events[r][i + 1]);
      us[i] = ms * 1000.0;
    }
    float total_ms = 0;
    cudaEventElapsedTime(&total_ms, events[r][0], events[r][iterations]);
    std::sort(us.begin(), us.end());
    Timing t{total_ms * 1000.0 / iterations, us[iterations / 2],
             us[std::min(iterations - 1, iterations * 99 / 100)]};
    t.enqueue_us = *std::max_element(enqueue_us.begin(), enqueue_us.end());
    if (t.mean_us > worst.mean_us) worst = t;
    for (auto& e : events[r]) cudaEventDestroy(e);
  }
  return worst;
}

struct PerfResult {
  Timing dispatch, combine;
};

// The standard configuration with `tokens` tokens per rank on every rank of `backend`.
PerfResult MeasureStandard(Backend& backend, int ranks, int tokens, const std::string& name) {
  CaseSpec spec;
  spec.name = name;
  spec.ranks = ranks;
  spec.experts = 256;
  spec.hidden = 7168;
  spec.tokens = 128;
  spec.top_k = 8;
  MoeHarness harness(backend, spec);
  const std::vector<int> n(ranks, tokens);
  auto inputs = harness.MakeInputs(RoutingKind::kRandom, n, 42, false, true);
  for (const Status& s : harness.Update(inputs)) EXPECT_TRUE(s.ok()) << s.ToString();
  for (const Status& s : harness.Dispatch()) EXPECT_TRUE(s.ok()) << s.ToString();
  harness.ExpectDispatchMatches(inputs, n);
  for (const Status& s : harness.Combine(true, 1)) EXPECT_TRUE(s.ok()) << s.ToString();
  harness.ExpectCombineMatches(inputs, n);

  // The harness's own op arguments, rebuilt here so the timed loop only enqueues.
  std::vector<DispatchArgs> dispatch(ranks);  // each rank's own arguments
  std::vector<CombineArgs> combine(ranks);
  std::vector<std::unique_ptr<DeviceBuffer>> x, out;
  for (int r = 0; r < ranks; ++r) {
    x.push_back(std::make_unique<DeviceBuffer>(r, inputs[r].x.size()));
    x[r]->Upload(inputs[r].x.data(), inputs[r].x.size());
    out.push_back(std::make_unique<DeviceBuffer>(r, inputs[r].x.size()));
    dispatch[r].x = TensorView{x[r]->data(), spec.dtype, {tokens, spec.hidden}};
    combine[r].out = TensorView{out[r]->data(), spec.dtype, {tokens, spec.hidden}};
  }
  auto dispatch_op = [&](int r) { return backend.Dispatch(harness.handle(r), dispatch[r]); };
  auto combine_op = [&](int r) { return backend.Combine(harness.handle(r), combine[r]); };
  std::vector<cudaStream_t> streams;
  for (int r = 0; r < ranks; ++r) streams.push_back(CudaBackendStream(backend, harness.handle(r)));
  TimeOps(streams, 20, dispatch_op);  // warm-up
  TimeOps(streams, 20, combine_op);
  PerfResult result;
  result.dispatch = TimeOps(streams, 200, dispatch_op);
  result.combine = TimeOps(streams, 200, combine_op);
  for (int r = 0; r < ranks; ++r) {
    Status s = WaitComplete(backend, harness.handle(r));
    EXPECT_TRUE(s.ok()) << s.ToString();
  }
  return result;
}

void Print(const char* label, int ranks, int tokens, const PerfResult& p) {
  const double bytes = double(tokens) * 8 * 7168 * 2;  // valid selections x H x bf16, per rank
  std::printf(
      "[perf] %-12s R=%d T=%3d  dispatch %6.1f us (median %6.1f, p99 %6.1f) %6.1f GB/s | "
      "combine %6.1f us (median %6.1f, p99 %6.1f) %6.1f GB/s | host %.1f/%.1f us per call\n",
      label, ranks, tokens, p.dispatch.mean_us, p.dispatch.median_us, p.dispatch.p99_us,
      bytes / p.dispatch.mean_us / 1e3, p.combine.mean_us, p.combine.median_us, p.combine.p99_us,
      bytes / p.combine.mean_us / 1e3, p.dispatch.enqueue_us, p.combine.enqueue_us);
}

TEST(CudaPerf, StandardConfigLowLatency) {
  EPD_REQUIRE_GPUS(2);
  const int R = std::min(GpuCount(), 8);
  std::printf("[perf] H=7168 K=8 E=256 bf16 expert-major, logical GB/s per rank\n");
  Print("all SMs", R, 128, MeasureStandard(*SharedBackend(), R, 128, "perf"));
  // No tokens: what the device-side synchronisation alone costs.
  Print("empty", R, 0, MeasureStandard(*SharedBackend(), R, 0, "perf_empty"));
}

// Fewer SMs for communication leaves more to the frontend's kernels: what it costs.
TEST(CudaPerf, BlockBudgetSweep) {
  EPD_REQUIRE_GPUS(2);
  const int R = std::min(GpuCount(), 8);
  for (int blocks : {16, 32, 66, 132}) {
    CudaBackendOptions options;
    options.create_nccl_comms = false;
    options.max_blocks_per_op = blocks;
    auto backend = CreateCudaBackend(options);
    ASSERT_TRUE(backend.ok()) << backend.status().ToString();
    const std::string label = std::to_string(blocks) + " blocks";
    Print(label.c_str(), R, 128, MeasureStandard(**backend, R, 128, "sweep"));
  }
}

}  // namespace
}  // namespace epd::gputest
