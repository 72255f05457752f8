#include "tests/gpu/moe_harness.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <numeric>

#include "common/dtype.h"

namespace epd::gputest {

struct MoeHarness::RankBuffers {
  RankBuffers(int device, const GroupConfig& c, const HandleLayout& l)
      : idx(device, size_t(c.max_tokens_per_rank) * c.top_k * 8),
        weights(device, size_t(c.max_tokens_per_rank) * c.top_k * 4),
        x(device, size_t(c.max_tokens_per_rank) * c.hidden * DTypeSize(c.dtype)),
        out(device, size_t(c.max_tokens_per_rank) * c.hidden * DTypeSize(c.dtype)),
        z(device, l.recv_rows * c.hidden * DTypeSize(c.dtype)),
        xq(device, size_t(c.max_tokens_per_rank) * c.hidden + 16),
        x_scales(device, size_t(c.max_tokens_per_rank) * c.scale_row_bytes() + 16) {}
  DeviceBuffer idx, weights, x, out, z, xq, x_scales;
  bool idx64 = false, has_weights = true;
  int n = 0;
};

namespace {

uint64_t Mix(uint64_t& state) {  // splitmix64: fast, good enough for test data
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// A random token value in [-2, 2], exactly representable in `dtype`.
void RandomRow(uint64_t& state, DType dtype, int hidden, char* row) {
  for (int h = 0; h < hidden; ++h) {
    const float f = static_cast<float>(static_cast<int>(Mix(state) % 4001) - 2000) / 997.0f;
    StoreFromFloat(row, dtype, h, f);
  }
}

// Values at the edges of the fp8 rule on the first tokens: NaN, infinities and a signed zero;
// an all-zero block; a block of bf16 subnormals next to one whose amax needs saturation care;
// ties of e4m3 rounding (amax 448 makes the scale 1, so v / scale = v).
void AddFp8EdgeValues(const GroupConfig& c, RankInput& in) {
  auto set = [&](int t, int h, float v) {
    if (t < in.n && h < c.hidden)
      StoreFromFloat(in.x.data() + size_t(t) * c.hidden * 2, c.dtype, h, v);
  };
  set(0, 0, std::numeric_limits<float>::quiet_NaN());
  set(0, 1, -std::numeric_limits<float>::infinity());
  set(0, 2, std::numeric_limits<float>::infinity());
  set(0, 3, -0.0f);
  for (int h = 0; h < 128; ++h) set(1, h, 0.0f);
  for (int h = 0; h < 128; ++h)
    set(2, h, Bf16ToFloat(static_cast<uint16_t>(1 + h)) * (h % 2 ? -1 : 1));
  for (int h = 128; h < 256; ++h) set(2, h, 448.0f - 8.0f * (h - 128) / 3.0f);
  set(2, 128, 448.0f);
  for (int h = 0; h < 128; ++h) set(3, h, 1.0e30f * (h % 3 - 1));
}

}  // namespace

MoeHarness::MoeHarness(Backend& backend, const CaseSpec& s, std::vector<int> devices)
    : backend_(backend), devices_(std::move(devices)) {
  config_.name = s.name;
  for (int r = 0; r < s.ranks; ++r) config_.ranks.push_back(r);
  config_.experts = s.experts;
  config_.hidden = s.hidden;
  config_.max_tokens_per_rank = s.tokens;
  config_.top_k = s.top_k;
  config_.dtype = s.dtype;
  config_.layout = s.layout;
  config_.expert_capacity = s.capacity;
  config_.algorithm = s.algorithm;
  config_.recv_capacity = s.recv_capacity;
  config_.sm_budget = s.sm_budget;
  config_.dispatch_format = s.dispatch_format;
  config_.scale_format = s.scale_format;
  prequantized_ = s.prequantized && config_.fp8_dispatch();
  layout_ = ComputeHandleLayout(config_);
  auto group = backend_.CreateGroup(config_);
  EXPECT_TRUE(group.ok()) << group.status().ToString();
  if (!group.ok()) return;
  group_ = std::move(group).value();
  for (int i = 0; i < s.skewed_slots; ++i) {
    auto handle = backend_.CreateHandle(*group_, 0);
    EXPECT_TRUE(handle.ok()) << handle.status().ToString();
    if (!handle.ok()) return;
    skew_handles_.push_back(std::move(handle).value());
  }
  for (int r = 0; r < s.ranks; ++r) {
    auto handle = backend_.CreateHandle(*group_, r);
    EXPECT_TRUE(handle.ok()) << handle.status().ToString();
    if (!handle.ok()) return;
    handles_.push_back(std::move(handle).value());
    buffers_.push_back(std::make_unique<RankBuffers>(device_of(r), config_, layout_));
  }
}

MoeHarness::~MoeHarness() {
  handles_.clear();
  skew_handles_.clear();
  group_.reset();
}

size_t MoeHarness::row_bytes() const { return size_t(config_.hidden) * DTypeSize(config_.dtype); }

std::vector<RankInput> MoeHarness::MakeInputs(RoutingKind kind, const std::vector<int>& n,
                                              uint64_t seed, bool idx64, bool weights) const {
  const int K = config_.top_k, E = config_.experts;
  std::vector<RankInput> inputs(config_.world_size());
  uint64_t state = seed * 7919 + 17;
  const int hot = E - 1;  // lives on the last rank
  for (int r = 0; r < config_.world_size(); ++r) {
    RankInput& in = inputs[r];
    in.n = n[r];
    in.idx64 = idx64;
    in.has_weights = weights;
    in.idx.assign(size_t(in.n) * K, -1);
    in.weights.assign(size_t(in.n) * K, 0.0f);
    in.x.resize(size_t(in.n) * row_bytes());
    for (int t = 0; t < in.n; ++t) {
      std::vector<int> chosen;
      for (int k = 0; k < K; ++k) {
        int e = -1;
        if (kind != RoutingKind::kAllAbsent) {
          if (kind == RoutingKind::kHotExpert && k == 0) {
            e = hot;
          } else {
            do {
              e = static_cast<int>(Mix(state) % E);
            } while (std::find(chosen.begin(), chosen.end(), e) != chosen.end() ||
                     (kind == RoutingKind::kHotExpert && e == hot));
          }
          chosen.push_back(e);
          if (kind == RoutingKind::kSparse && Mix(state) % 4 == 0) e = -1;
        }
        in.idx[size_t(t) * K + k] = e;
        in.weights[size_t(t) * K + k] =
            static_cast<float>(Mix(state) % 100000) / 100000.0f + 0.001f;
      }
      RandomRow(state, config_.dtype, config_.hidden, in.x.data() + size_t(t) * row_bytes());
    }
    if (config_.fp8_dispatch()) AddFp8EdgeValues(config_, in);
    if (prequantized_) {
      in.xq.resize(size_t(in.n) * config_.hidden);
      in.x_scales.resize(size_t(in.n) * config_.scale_row_bytes());
      for (char& byte : in.xq) byte = static_cast<char>(Mix(state));
      for (char& byte : in.x_scales) byte = static_cast<char>(Mix(state));
    }
  }
  return inputs;
}

std::vector<Status> MoeHarness::Update(const std::vector<RankInput>& inputs) {
  const int R = config_.world_size(), K = config_.top_k;
  for (int r = 0; r < R; ++r) {
    const RankInput& in = inputs[r];
    RankBuffers& b = *buffers_[r];
    b.idx64 = in.idx64;
    b.has_weights = in.has_weights;
    b.n = in.n;
    if (in.idx64) {
      b.idx.Upload(in.idx.data(), in.idx.size() * 8);
    } else {
      std::vector<int32_t> narrow(in.idx.begin(), in.idx.end());
      b.idx.Upload(narrow.data(), narrow.size() * 4);
    }
    b.weights.Upload(in.weights.data(), in.weights.size() * 4);
    b.x.Upload(in.x.data(), in.x.size());
    if (prequantized_) {
      b.xq.Upload(in.xq.data(), in.xq.size());
      b.x_scales.Upload(in.x_scales.data(), in.x_scales.size());
    }
  }
  std::vector<Status> statuses(R);
  OnEveryRank(R, [&](int r) {
    RankBuffers& b = *buffers_[r];
    UpdateArgs args;
    args.num_tokens = b.n;
    args.topk_idx = TensorView{b.idx.data(), b.idx64 ? DType::kInt64 : DType::kInt32, {b.n, K}};
    if (b.has_weights) args.topk_weights = TensorView{b.weights.data(), DType::kFp32, {b.n, K}};
    Status s = backend_.UpdateHandle(*handles_[r], args);
    statuses[r] = s.ok() ? WaitComplete(backend_, *handles_[r]) : s;
  });
  return statuses;
}

DispatchArgs MoeHarness::DispatchArgsOf(int r) const {
  const int n = buffers_[r]->n;
  DispatchArgs args;
  args.x = TensorView{buffers_[r]->x.data(), config_.dtype, {n, config_.hidden}};
  if (prequantized_) {
    args.x = TensorView{buffers_[r]->xq.data(), DType::kFp8E4m3, {n, config_.hidden}};
    args.x_scales = TensorView{
        buffers_[r]->x_scales.data(), config_.scale_dtype(), {n, config_.scale_blocks()}};
  }
  return args;
}

std::vector<Status> MoeHarness::Dispatch() {
  const int R = config_.world_size();
  std::vector<Status> statuses(R);
  OnEveryRank(R, [&](int r) {
    Status s = backend_.Dispatch(*handles_[r], DispatchArgsOf(r));
    statuses[r] = s.ok() ? WaitComplete(backend_, *handles_[r]) : s;
  });
  return statuses;
}

std::vector<Status> MoeHarness::DispatchWithLateRank(int late_rank,
                                                     const std::function<void()>& while_late) {
  const int R = config_.world_size();
  std::vector<Status> statuses(R);
  auto enqueue = [&](int r) { statuses[r] = backend_.Dispatch(*handles_[r], DispatchArgsOf(r)); };
  for (int r = 0; r < R; ++r) {
    if (r != late_rank) enqueue(r);  // returns at once: nothing waits for the late rank here
  }
  while_late();
  enqueue(late_rank);
  for (int r = 0; r < R; ++r) {
    if (statuses[r].ok()) statuses[r] = WaitComplete(backend_, *handles_[r]);
  }
  return statuses;
}

size_t MoeHarness::used_rows(int rank) const {
  if (config_.layout == Layout::kRankMajor && !config_.high_throughput()) {
    return layout_.recv_rows;
  }
  if (ref_recv_.empty()) return 0;  // no dispatch compared yet: no rows to fill
  const std::vector<char>& recv = ref_recv_[rank];
  // High-throughput: rows from every source rank; expert-major: rows of every local expert.
  const bool packed = config_.high_throughput();
  const auto* counts = reinterpret_cast<const int32_t*>(
      recv.data() + (packed ? layout_.recv_rank_counts_offset : layout_.recv_counts_offset));
  size_t rows = 0;
  for (int i = 0; i < (packed ? config_.world_size() : config_.local_experts()); ++i) {
    rows += counts[i];
  }
  return std::min(rows, layout_.recv_rows);
}

std::vector<Status> MoeHarness::Combine(bool in_place, uint64_t seed) {
  const int R = config_.world_size();
  if (config_.fp8_dispatch()) in_place = false;  // recv_x holds e4m3, not expert outputs
  last_in_place_ = in_place;
  z_host_.assign(R, {});
  uint64_t state = seed * 104729 + 3;
  for (int r = 0; r < R; ++r) {
    // Rows the expert GEMMs would have written; the rest stays as it is on the device.
    const size_t rows = used_rows(r);
    z_host_[r].assign(layout_.recv_rows * row_bytes(), 0);
    for (size_t row = 0; row < rows; ++row) {
      RandomRow(state, config_.dtype, config_.hidden, z_host_[r].data() + row * row_bytes());
    }
    void* target = in_place ? handles_[r]->exported().data() : buffers_[r]->z.data();
    CopyToDevice(device_of(r), target, z_host_[r].data(), rows * row_bytes());
  }
  std::vector<Status> statuses(R);
  OnEveryRank(R, [&](int r) {
    CombineArgs args;
    args.expert_out = in_place ? nullptr : buffers_[r]->z.data();
    args.out = TensorView{buffers_[r]->out.data(), config_.dtype, {buffers_[r]->n, config_.hidden}};
    Status s = backend_.Combine(*handles_[r], args);
    statuses[r] = s.ok() ? WaitComplete(backend_, *handles_[r]) : s;
  });
  return statuses;
}

void MoeHarness::BuildReference(const std::vector<RankInput>& inputs,
                                const std::vector<int>& bound) {
  const int R = config_.world_size(), K = config_.top_k, T = config_.max_tokens_per_rank;
  ref_idx_.assign(R, std::vector<int32_t>(size_t(T) * K, -1));
  ref_weights_.assign(R, std::vector<float>(size_t(T) * K, 0.0f));
  ref_counts_.assign(R, std::vector<int32_t>(config_.experts, 0));
  for (int r = 0; r < R; ++r) {
    const RankInput& in = inputs[r];
    if (bound[r] == 0) continue;
    std::vector<int32_t> narrow(in.idx.begin(), in.idx.end());
    const void* idx = in.idx64 ? static_cast<const void*>(in.idx.data()) : narrow.data();
    Status s =
        reference::BindRouting(config_, idx, in.idx64 ? DType::kInt64 : DType::kInt32,
                               in.has_weights ? in.weights.data() : nullptr, bound[r],
                               ref_idx_[r].data(), ref_weights_[r].data(), ref_counts_[r].data());
    ASSERT_TRUE(s.ok()) << s.ToString();
  }
}

void RunRoundsOnSharedGpu(const CaseSpec& spec, RoutingKind routing) {
  Backend* backend = SharedGpuBackend();
  ASSERT_NE(backend, nullptr);
  std::vector<int> devices;
  for (int r = 0; r < spec.ranks; ++r) devices.push_back(SharedGpuDevice(r));
  MoeHarness harness(*backend, spec, devices);
  if (::testing::Test::HasFailure()) return;
  RunRounds(*backend, harness, routing);
}

void ExpectBytesEqual(const void* expected, const void* actual, size_t bytes, size_t element_bytes,
                      const std::string& what) {
  if (std::memcmp(expected, actual, bytes) == 0) return;
  const auto* a = static_cast<const unsigned char*>(expected);
  const auto* b = static_cast<const unsigned char*>(actual);
  size_t i = 0;
  while (a[i] == b[i]) ++i;
  size_t mismatches = 0;
  for (size_t j = 0; j < bytes; ++j) mismatches += a[j] != b[j];
  ADD_FAILURE() << what << ": first difference at element " << i / element_bytes << " (byte " << i
                << " of " << bytes << "), expected byte " << int(a[i]) << " got " << int(b[i])
                << "; " << mismatches << " bytes differ";
}

void MoeHarness::ExpectDispatchMatches(const std::vector<RankInput>& inputs,
                                       const std::vector<int>& bound) {
  const int R = config_.world_size();
  BuildReference(inputs, bound);
  std::vector<reference::SourceRank> ranks(R);
  for (int r = 0; r < R; ++r) {
    ranks[r].num_tokens = bound[r];
    ranks[r].x = prequantized_ ? inputs[r].xq.data() : inputs[r].x.data();
    ranks[r].x_scales = prequantized_ ? inputs[r].x_scales.data() : nullptr;
    ranks[r].topk_idx = ref_idx_[r].data();
    ranks[r].topk_weights = ref_weights_[r].data();
    ranks[r].expert_counts = ref_counts_[r].data();
  }
  ASSERT_TRUE(reference::CheckCapacity(config_, ranks).ok());
  ref_recv_.assign(R, std::vector<char>(layout_.exported_bytes, 0));
  for (int d = 0; d < R; ++d) {
    reference::DispatchReceive(config_, d, ranks,
                               reference::ReceiveBuffersAt(ref_recv_[d].data(), layout_));
  }
  for (int d = 0; d < R; ++d) {
    const std::string where = config_.name + " rank " + std::to_string(d) + ": ";
    const char* base = static_cast<const char*>(handles_[d]->exported().data());
    const std::vector<char>& want = ref_recv_[d];
    auto compare = [&](size_t offset, size_t bytes, size_t elem, const char* name) {
      std::vector<char> got(bytes);
      CopyToHost(device_of(d), got.data(), base + offset, bytes);
      ExpectBytesEqual(want.data() + offset, got.data(), bytes, elem, where + name);
    };
    compare(layout_.recv_counts_offset, layout_.recv_counts_bytes, 4, "recv_counts");
    const size_t rows = used_rows(d);
    compare(layout_.recv_x_offset, rows * config_.recv_row_bytes(), config_.recv_row_bytes(),
            "recv_x rows");
    if (config_.fp8_dispatch()) {
      compare(layout_.recv_scales_offset, rows * config_.scale_row_bytes(),
              config_.scale_row_bytes(), "recv_scales rows");
    }
    if (config_.high_throughput()) {
      // Only what this dispatch wrote: rows past the total and gather entries past
      // recv_offsets[L] keep older contents.
      const int L = config_.local_experts();
      const auto* offsets =
          reinterpret_cast<const int32_t*>(want.data() + layout_.recv_offsets_offset);
      compare(layout_.recv_rank_counts_offset, layout_.recv_rank_counts_bytes, 4,
              "recv_rank_counts");
      compare(layout_.recv_rank_offsets_offset, layout_.recv_rank_offsets_bytes, 4,
              "recv_rank_offsets");
      compare(layout_.recv_offsets_offset, layout_.recv_offsets_bytes, 4, "recv_offsets");
      compare(layout_.recv_src_offset, rows * 8, 8, "recv_src rows");
      compare(layout_.recv_topk_idx_offset, rows * 4 * config_.top_k, 4 * config_.top_k,
              "recv_topk_idx rows");
      compare(layout_.recv_topk_weights_offset, rows * 4 * config_.top_k, 4 * config_.top_k,
              "recv_topk_weights rows");
      compare(layout_.expert_rows_offset, size_t(offsets[L]) * 4, 4, "expert_rows");
    } else if (config_.layout == Layout::kExpertMajor) {
      compare(layout_.recv_offsets_offset, layout_.recv_offsets_bytes, 4, "recv_offsets");
      compare(layout_.recv_src_offset, rows * 12, 12, "recv_src rows");
      compare(layout_.recv_weights_offset, rows * 4, 4, "recv_weights rows");
    } else {
      compare(layout_.recv_topk_idx_offset, layout_.recv_topk_idx_bytes, 4 * config_.top_k,
              "recv_topk_idx");
      compare(layout_.recv_topk_weights_offset, layout_.recv_topk_weights_bytes, 4 * config_.top_k,
              "recv_topk_weights");
    }
  }
}

void MoeHarness::ExpectCombineMatches(const std::vector<RankInput>& inputs,
                                      const std::vector<int>& bound) {
  const int R = config_.world_size(), K = config_.top_k;
  std::vector<reference::SourceRank> ranks(R);
  for (int r = 0; r < R; ++r) {
    ranks[r].num_tokens = bound[r];
    ranks[r].x = inputs[r].x.data();
    ranks[r].topk_idx = ref_idx_[r].data();
    ranks[r].topk_weights = ref_weights_[r].data();
    ranks[r].expert_counts = ref_counts_[r].data();
  }
  std::vector<const void*> z(R);
  for (int r = 0; r < R; ++r) z[r] = z_host_[r].data();
  for (int r = 0; r < R; ++r) {
    std::vector<int32_t> slot(size_t(config_.max_tokens_per_rank) * K, -1);
    reference::ComputeSlots(config_, r, ranks, slot.data());
    const size_t bytes = size_t(bound[r]) * row_bytes();
    std::vector<char> want(bytes), got(bytes);
    reference::Combine(config_, ranks[r], slot.data(), z, want.data());
    CopyToHost(device_of(r), got.data(), buffers_[r]->out.data(), bytes);
    ExpectBytesEqual(want.data(), got.data(), bytes, DTypeSize(config_.dtype),
                     config_.name + " rank " + std::to_string(r) + ": combine out" +
                         (last_in_place_ ? " (in place)" : ""));
  }
}

void RunRounds(Backend& backend, MoeHarness& harness, RoutingKind routing) {
  const int R = harness.config().world_size(), T = harness.config().max_tokens_per_rank;
  const uint64_t allocations = backend.allocations().allocations();
  const uint64_t frees = backend.allocations().frees();
  const std::vector<int> choices = {T, T - 1, 1, 0};
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    std::vector<int> n(R);
    for (int r = 0; r < R; ++r) n[r] = choices[(r + round) % choices.size()];
    if (round == 2) std::fill(n.begin(), n.end(), T);
    auto inputs = harness.MakeInputs(routing, n, 1000 * round + R, round % 2 == 1, round != 1);
    for (const Status& s : harness.Update(inputs)) ASSERT_TRUE(s.ok()) << s.ToString();
    for (const Status& s : harness.Dispatch()) ASSERT_TRUE(s.ok()) << s.ToString();
    harness.ExpectDispatchMatches(inputs, n);
    for (const Status& s : harness.Combine(round == 1, round + 5)) {
      ASSERT_TRUE(s.ok()) << s.ToString();
    }
    harness.ExpectCombineMatches(inputs, n);
  }
  EXPECT_EQ(backend.allocations().allocations(), allocations) << "ops must not allocate";
  EXPECT_EQ(backend.allocations().frees(), frees) << "ops must not free";
}

}  // namespace epd::gputest
