// Two node ranks of a private cuda backend for tests that must not touch the binary's shared
// one (stuck waits, aborts, shutdown): GPUs 0 and 1, or GPU 0 twice on a one-GPU host (small
// grids keep both ranks' kernels resident at once).
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "daemon/backends/cuda/cuda_backend.h"
#include "tests/gpu/moe_harness.h"

namespace epd::gputest {

// The CUDA device of each of the two node ranks: GPUs 0 and 1, or GPU 0 twice.
inline std::vector<int> TwoRankDevices() {
  return GpuCount() >= 2 ? std::vector<int>{0, 1} : std::vector<int>{0, 0};
}

inline std::unique_ptr<Backend> TwoRankBackend(std::chrono::milliseconds op_timeout) {
  CudaBackendOptions options;
  options.devices = TwoRankDevices();
  options.op_timeout = op_timeout;
  options.create_nccl_comms = false;
  options.max_blocks_per_op = 8;  // two ranks' kernels resident together on one GPU
  auto backend = CreateCudaBackend(options);
  EXPECT_TRUE(backend.ok()) << backend.status().ToString();
  return backend.ok() ? std::move(backend).value() : nullptr;
}

inline CaseSpec TwoRankSpec(const std::string& name) {
  CaseSpec spec;
  spec.name = name;
  spec.ranks = 2;
  spec.experts = 8;
  spec.hidden = 512;
  spec.tokens = 16;
  spec.top_k = 2;
  return spec;
}

// Binds 16 random tokens on both ranks; returns the inputs for the reference.
inline std::vector<RankInput> BindTwoRanks(MoeHarness& harness, uint64_t seed) {
  auto inputs = harness.MakeInputs(RoutingKind::kRandom, {16, 16}, seed, false, true);
  for (const Status& s : harness.Update(inputs)) EXPECT_TRUE(s.ok()) << s.ToString();
  return inputs;
}

// One checked layer of a two-rank group: 16 random tokens on both ranks bound, dispatched and
// combined, each step against the cpu reference.
inline void RunCheckedLayer(MoeHarness& harness, uint64_t seed) {
  auto inputs = BindTwoRanks(harness, seed);
  for (const Status& s : harness.Dispatch()) ASSERT_TRUE(s.ok()) << s.ToString();
  harness.ExpectDispatchMatches(inputs, {16, 16});
  for (const Status& s : harness.Combine(false, seed + 1)) ASSERT_TRUE(s.ok()) << s.ToString();
  harness.ExpectCombineMatches(inputs, {16, 16});
}

}  // namespace epd::gputest
