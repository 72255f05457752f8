// The routing bind's outputs compared directly (not only through dispatch and combine): for
// each n, both launch paths (single block: no scratch; chunked: the handle's scratch from
// n >= kRoutingChunkedMinTokens) against a host oracle written from kernels/routing.cuh's
// contract, and byte for byte against each other over the whole buffers (nothing past n is
// written either). Error records: the first bad (t, k) over all chunks, a bad weight first.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "kernels/routing.cuh"
#include "kernels/routing_scratch.h"
#include "tests/gpu/gpu_test_env.h"

namespace epd::gputest {
namespace {

using kernels::DeviceError;
using kernels::RoutingParams;

constexpr uint8_t kSentinel = 0x5a;  // bytes no bind writes (outputs start as this)

struct Shape {
  int max_tokens, top_k, experts, world_size;
  bool high_throughput, rank_major, int64_ids;
};

std::string Describe(const Shape& s, int n) {
  return "T " + std::to_string(s.max_tokens) + " K " + std::to_string(s.top_k) + " E " +
         std::to_string(s.experts) + " R " + std::to_string(s.world_size) +
         (s.high_throughput ? " ht" : " ll") + (s.rank_major ? " rank-major" : " expert-major") +
         (s.int64_ids ? " int64" : " int32") + " n " + std::to_string(n);
}

// Everything a bind writes, as host vectors.
struct Bound {
  std::vector<int32_t> topk, expert_counts, local_rank, slot, dest_row, dest_counts;
  std::vector<float> weights;
  int32_t bound_tokens = 0;
  DeviceError error{};
};

// Routing with repeats inside tokens (high-throughput ranks a token once per expert) and -1s.
std::vector<int64_t> RandomIds(const Shape& s, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> expert(0, s.experts - 1);
  std::uniform_int_distribution<int> roll(0, 19);
  std::vector<int64_t> ids(static_cast<size_t>(s.max_tokens) * s.top_k);
  for (size_t i = 0; i < ids.size(); ++i) {
    const int r = roll(rng);
    const size_t k = i % s.top_k;
    ids[i] = r == 0 ? -1 : (r == 1 && k > 0 ? ids[i - 1] : expert(rng));
  }
  return ids;
}

Bound Oracle(const Shape& s, int n, int group_rank, const std::vector<int64_t>& ids,
             const std::vector<float>& weights) {
  const int K = s.top_k, E = s.experts, R = s.world_size, L = E / R;
  Bound b;
  b.topk.resize(static_cast<size_t>(n) * K);
  b.weights.resize(b.topk.size());
  b.local_rank.resize(b.topk.size());
  b.slot.resize(b.topk.size());
  b.expert_counts.assign(E, 0);
  b.dest_counts.assign(R, 0);
  b.dest_row.resize(static_cast<size_t>(n) * R);
  for (int t = 0; t < n; ++t) {
    unsigned mask = 0;
    for (int k = 0; k < K; ++k) {
      const size_t i = static_cast<size_t>(t) * K + k;
      const int e = static_cast<int>(ids[i]);
      b.topk[i] = e;
      b.weights[i] = weights.empty() ? 1.0f : weights[i];
      bool counted = e >= 0, first_rank = e >= 0;
      for (int j = 0; j < k; ++j) {
        const int ej = static_cast<int>(ids[i - k + j]);
        if (s.high_throughput && ej == e) counted = false;
        if (ej >= 0 && e >= 0 && ej / L == e / L) first_rank = false;
      }
      b.local_rank[i] = counted ? b.expert_counts[e]++ : -1;
      b.slot[i] = first_rank ? group_rank * s.max_tokens + t : -1;
      if (e >= 0) mask |= 1u << (e / L);
    }
    for (int d = 0; d < R; ++d) {
      b.dest_row[static_cast<size_t>(t) * R + d] = (mask >> d) & 1u ? b.dest_counts[d]++ : -1;
    }
  }
  b.bound_tokens = n;
  return b;
}

// Device buffers of one bind, all starting as kSentinel bytes.
class BindBuffers {
 public:
  BindBuffers(int device, const Shape& s)
      : shape_(s),
        selections_(static_cast<size_t>(s.max_tokens) * s.top_k),
        ids_(device, selections_ * 8),
        weights_in_(device, selections_ * 4),
        topk_(device, selections_ * 4),
        weights_(device, selections_ * 4),
        expert_counts_(device, static_cast<size_t>(s.experts) * 4),
        local_rank_(device, selections_ * 4),
        slot_(device, selections_ * 4),
        bound_tokens_(device, 4),
        dest_row_(device, static_cast<size_t>(s.max_tokens) * s.world_size * 4),
        dest_counts_(device, static_cast<size_t>(s.world_size) * 4),
        error_(device, sizeof(DeviceError)),
        scratch_(device, std::max<size_t>(
                             4, kernels::RoutingScratchBytes(s.max_tokens, s.experts, s.world_size,
                                                             s.high_throughput))) {}

  // Binds n tokens; chunked: with the handle-sized scratch (used from the chunked minimum).
  Bound Bind(int n, int group_rank, const std::vector<int64_t>& ids,
             const std::vector<float>& weights, bool chunked) {
    const Shape& s = shape_;
    for (DeviceBuffer* b : {&topk_, &weights_, &expert_counts_, &local_rank_, &slot_,
                            &bound_tokens_, &dest_row_, &dest_counts_, &error_}) {
      std::vector<uint8_t> fill(b->size(), kSentinel);
      b->Upload(fill.data(), fill.size());
    }
    std::vector<uint8_t> garbage(scratch_.size(), 0xa5);  // stale scratch of an earlier bind
    scratch_.Upload(garbage.data(), garbage.size());
    const size_t count = static_cast<size_t>(n) * s.top_k;
    if (s.int64_ids) {
      ids_.Upload(ids.data(), count * 8);
    } else {
      std::vector<int32_t> narrow(ids.begin(), ids.begin() + count);
      ids_.Upload(narrow.data(), count * 4);
    }
    if (!weights.empty()) weights_in_.Upload(weights.data(), count * 4);

    RoutingParams p;
    p.topk_idx = ids_.data();
    p.idx_is_int64 = s.int64_ids;
    p.topk_weights = weights.empty() ? nullptr : static_cast<const float*>(weights_in_.data());
    p.num_tokens = n;
    p.top_k = s.top_k;
    p.experts = s.experts;
    p.local_experts = s.experts / s.world_size;
    p.max_tokens = s.max_tokens;
    p.group_rank = group_rank;
    p.rank_major = s.rank_major;
    p.topk_out = static_cast<int32_t*>(topk_.data());
    p.weights_out = static_cast<float*>(weights_.data());
    p.expert_counts = static_cast<int32_t*>(expert_counts_.data());
    p.local_rank = static_cast<int32_t*>(local_rank_.data());
    p.slot = static_cast<int32_t*>(slot_.data());
    p.bound_tokens = static_cast<int32_t*>(bound_tokens_.data());
    p.error = static_cast<DeviceError*>(error_.data());
    p.high_throughput = s.high_throughput;
    p.world_size = s.world_size;
    if (s.high_throughput) {
      p.dest_row = static_cast<int32_t*>(dest_row_.data());
      p.dest_counts = static_cast<int32_t*>(dest_counts_.data());
    }
    if (chunked) {
      p.scratch = scratch_.data();
      p.scratch_bytes =
          kernels::RoutingScratchBytes(s.max_tokens, s.experts, s.world_size, s.high_throughput);
      p.chunked_from = kernels::kRoutingChunkedMinTokens;  // below the tuned default too
    }
    EXPECT_EQ(kernels::LaunchBindRouting(p, nullptr), cudaSuccess);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);

    Bound out;
    auto download = [](const DeviceBuffer& b, auto& v, size_t entries) {
      v.resize(entries);
      b.Download(v.data(), entries * sizeof(v[0]));
    };
    download(topk_, out.topk, selections_);
    download(weights_, out.weights, selections_);
    download(local_rank_, out.local_rank, selections_);
    download(slot_, out.slot, selections_);
    download(expert_counts_, out.expert_counts, s.experts);
    download(dest_row_, out.dest_row, static_cast<size_t>(s.max_tokens) * s.world_size);
    download(dest_counts_, out.dest_counts, s.world_size);
    bound_tokens_.Download(&out.bound_tokens, 4);
    error_.Download(&out.error, sizeof(DeviceError));
    return out;
  }

 private:
  Shape shape_;
  size_t selections_;
  DeviceBuffer ids_, weights_in_, topk_, weights_, expert_counts_, local_rank_, slot_,
      bound_tokens_, dest_row_, dest_counts_, error_, scratch_;
};

template <typename T>
bool SameBytes(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

void ExpectSameBind(const Bound& a, const Bound& b, const std::string& what) {
  EXPECT_TRUE(SameBytes(a.topk, b.topk)) << what;
  EXPECT_TRUE(SameBytes(a.weights, b.weights)) << what;
  EXPECT_TRUE(SameBytes(a.expert_counts, b.expert_counts)) << what;
  EXPECT_TRUE(SameBytes(a.local_rank, b.local_rank)) << what;
  EXPECT_TRUE(SameBytes(a.slot, b.slot)) << what;
  EXPECT_TRUE(SameBytes(a.dest_row, b.dest_row)) << what;
  EXPECT_TRUE(SameBytes(a.dest_counts, b.dest_counts)) << what;
  EXPECT_EQ(a.bound_tokens, b.bound_tokens) << what;
  EXPECT_EQ(std::memcmp(&a.error, &b.error, sizeof(DeviceError)), 0) << what;
}

// The first `entries` of got equal want (the oracle covers only the bound tokens).
template <typename T>
void ExpectPrefix(const std::vector<T>& got, const std::vector<T>& want, const char* name,
                  const std::string& what) {
  ASSERT_GE(got.size(), want.size()) << name << " " << what;
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_EQ(got[i], want[i]) << name << "[" << i << "] " << what;
  }
}

void ExpectOracle(const Shape& s, const Bound& got, const Bound& want, const std::string& what) {
  ExpectPrefix(got.topk, want.topk, "topk_out", what);
  ExpectPrefix(got.weights, want.weights, "weights_out", what);
  ExpectPrefix(got.expert_counts, want.expert_counts, "expert_counts", what);
  ExpectPrefix(got.local_rank, want.local_rank, "local_rank", what);
  if (s.rank_major) ExpectPrefix(got.slot, want.slot, "slot", what);
  if (s.high_throughput) {
    ExpectPrefix(got.dest_row, want.dest_row, "dest_row", what);
    ExpectPrefix(got.dest_counts, want.dest_counts, "dest_counts", what);
  }
  EXPECT_EQ(got.bound_tokens, want.bound_tokens) << what;
}

void PrintTo(const Shape& s, std::ostream* os) { *os << Describe(s, s.max_tokens); }

class RoutingBindTest : public ::testing::TestWithParam<Shape> {};

TEST_P(RoutingBindTest, ChunkedAndSingleBlockMatchTheOracleForEveryN) {
  EPD_REQUIRE_GPUS(1);
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  const Shape s = GetParam();
  const int T = s.max_tokens;
  const std::vector<int64_t> ids = RandomIds(s, 17u + s.experts + s.top_k);
  std::vector<float> weights(ids.size());
  for (size_t i = 0; i < weights.size(); ++i) weights[i] = 0.25f + static_cast<float>(i % 7);
  BindBuffers buffers(0, s);
  const int group_rank = s.world_size - 1;
  for (int n :
       {0, 1, 31, 32, 33, kernels::kRoutingChunkedMinTokens - 1, kernels::kRoutingChunkedMinTokens,
        kernels::kRoutingChunkedMinTokens + 1, T / 2 + 7, T - 1, T}) {
    for (bool with_weights : {true, false}) {
      const std::string what = Describe(s, n) + (with_weights ? " weights" : " no weights");
      const std::vector<float> w = with_weights ? weights : std::vector<float>{};
      const Bound single = buffers.Bind(n, group_rank, ids, w, /*chunked=*/false);
      const Bound chunked = buffers.Bind(n, group_rank, ids, w, /*chunked=*/true);
      ExpectOracle(s, single, Oracle(s, n, group_rank, ids, w), what + " single block");
      ExpectOracle(s, chunked, Oracle(s, n, group_rank, ids, w), what + " chunked");
      ExpectSameBind(single, chunked, what);
      if (HasFatalFailure()) return;
    }
  }
}

TEST_P(RoutingBindTest, TheFirstBadSelectionOverAllChunksIsReportedAndNothingBinds) {
  EPD_REQUIRE_GPUS(1);
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  const Shape s = GetParam();
  const int T = s.max_tokens, K = s.top_k;
  std::vector<int64_t> ids = RandomIds(s, 5);
  std::vector<float> weights(ids.size(), 0.5f);
  BindBuffers buffers(0, s);
  // A bad id in a late chunk and an earlier one: the earlier (t, k) is the one reported.
  const int late_t = T - 3, early_t = T / 3 + 1, late_k = K > 1 ? 1 : 0;
  const int64_t late_value = s.experts, early_value = s.int64_ids ? (int64_t{1} << 40) : -2;
  ids[static_cast<size_t>(late_t) * K + late_k] = late_value;
  ids[static_cast<size_t>(early_t) * K + K - 1] = early_value;
  auto expect_rejected = [&](const Bound& b, int32_t code, int t, int k, int64_t value,
                             const std::string& what) {
    EXPECT_EQ(b.error.code, code) << what;
    EXPECT_EQ(b.error.a, t) << what;
    EXPECT_EQ(b.error.b, k) << what;
    // A bad id's record carries the expert count (the bound the message names); a weight's none.
    EXPECT_EQ(b.error.c, code == kernels::kDeviceErrorBadExpertId ? s.experts : 0) << what;
    EXPECT_EQ(b.error.value, value) << what;
    EXPECT_EQ(b.error.value2, 0) << what;
    EXPECT_EQ(b.bound_tokens, 0) << what;
    for (int32_t c : b.expert_counts) ASSERT_EQ(c, 0) << what;
    if (s.high_throughput) {
      for (int32_t c : b.dest_counts) ASSERT_EQ(c, 0) << what;
    }
  };
  for (int n : {T, late_t + 1}) {
    const std::string what = Describe(s, n) + " two bad ids";
    const Bound single = buffers.Bind(n, 0, ids, weights, false);
    const Bound chunked = buffers.Bind(n, 0, ids, weights, true);
    expect_rejected(chunked, kernels::kDeviceErrorBadExpertId, early_t, K - 1, early_value, what);
    ExpectSameBind(single, chunked, what);
  }
  // The late one alone: found in its own chunk.
  {
    std::vector<int64_t> late_only = ids;
    late_only[static_cast<size_t>(early_t) * K + K - 1] = 0;
    const std::string what = Describe(s, T) + " late bad id only";
    const Bound chunked = buffers.Bind(T, 0, late_only, weights, true);
    expect_rejected(chunked, kernels::kDeviceErrorBadExpertId, late_t, late_k, late_value, what);
    ExpectSameBind(buffers.Bind(T, 0, late_only, weights, false), chunked, what);
  }
  // A non-finite weight anywhere is reported before any bad id, even a later one.
  weights[static_cast<size_t>(late_t) * K] = std::numeric_limits<float>::infinity();
  weights[static_cast<size_t>(T - 1) * K] = std::nanf("");
  {
    const std::string what = Describe(s, T) + " bad weight";
    const Bound chunked = buffers.Bind(T, 0, ids, weights, true);
    uint32_t bits;
    std::memcpy(&bits, &weights[static_cast<size_t>(late_t) * K], 4);
    expect_rejected(chunked, kernels::kDeviceErrorBadWeight, late_t, 0, static_cast<int64_t>(bits),
                    what);
    ExpectSameBind(buffers.Bind(T, 0, ids, weights, false), chunked, what);
  }
  // A good bind after a rejected one binds everything (the scratch's rejection is per bind).
  {
    const std::vector<int64_t> good = RandomIds(s, 6);
    const Bound chunked = buffers.Bind(T, 0, good, {}, true);
    EXPECT_EQ(chunked.error.code, static_cast<int32_t>(0x5a5a5a5a)) << "no record written";
    ExpectOracle(s, chunked, Oracle(s, T, 0, good, {}), Describe(s, T) + " after a rejection");
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, RoutingBindTest,
    ::testing::Values(
        // The bench's shape (H7168 K8 E256) on 8 ranks, T spanning many chunks, partial last.
        Shape{1000, 8, 256, 8, false, false, false}, Shape{1000, 8, 256, 8, false, true, true},
        Shape{1000, 8, 256, 8, true, false, false}, Shape{1000, 8, 256, 8, true, true, true},
        Shape{1000, 8, 256, 8, true, false, true}, Shape{1000, 8, 256, 8, false, false, true},
        // One rank, top-1, few experts: many selections of one expert per chunk.
        Shape{4096, 1, 4, 1, false, false, false}, Shape{4096, 1, 4, 1, true, true, false},
        // The most experts: fewer warps per block (their counters fill shared memory).
        Shape{600, 4, 4096, 8, true, true, true}, Shape{600, 32, 4096, 2, false, false, false}),
    [](const ::testing::TestParamInfo<Shape>& info) {
      const Shape& s = info.param;
      return "T" + std::to_string(s.max_tokens) + "_K" + std::to_string(s.top_k) + "_E" +
             std::to_string(s.experts) + "_R" + std::to_string(s.world_size) +
             (s.high_throughput ? "_Ht" : "_Ll") + (s.rank_major ? "_RankMajor" : "_ExpertMajor") +
             (s.int64_ids ? "_Int64" : "_Int32");
    });

}  // namespace
}  // namespace epd::gputest
