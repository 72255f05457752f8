#include "client/examples/moe_math.h"

#include <fmt/format.h>

#include <cstring>

#include "common/proto_dtype.h"

namespace epd::example {
namespace {

uint64_t Mix(uint64_t a, uint64_t b = 0, uint64_t c = 0, uint64_t d = 0, uint64_t e = 0) {
  // splitmix64 over the combined key: deterministic across processes and platforms.
  uint64_t z = a * 0x9E3779B97F4A7C15ull ^ b * 0xBF58476D1CE4E5B9ull ^ c * 0x94D049BB133111EBull ^
               d * 0xD6E8FEB86659FD93ull ^ e * 0xCA5A826395121157ull;
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The float a value becomes once stored in `dtype` (round to nearest even).
float Round(DType dtype, float value) {
  uint32_t scratch = 0;
  StoreFromFloat(&scratch, dtype, 0, value);
  return LoadAsFloat(&scratch, dtype, 0);
}

}  // namespace

float DequantizedValue(const Problem& p, const uint8_t* q_row, const void* scale_row, int h) {
  const int block = h / kFp8BlockChannels;
  float scale;
  if (p.scales() == ScaleFormat::kUe8m0) {
    scale = Ue8m0ToFloat(static_cast<const uint8_t*>(scale_row)[block]);
  } else {
    std::memcpy(&scale, static_cast<const char*>(scale_row) + 4 * block, sizeof(scale));
  }
  return Round(DType::kBf16, DecodeE4m3(q_row[h]) * scale);
}

namespace {

// What an expert reads for one token row: the token itself, or with fp8 its dequantized
// e4m3 row, bf16(decode(q) * scale).
std::vector<float> DispatchedValues(const Problem& p, const uint8_t* x_row) {
  const DType dtype = p.token_dtype();
  std::vector<float> values(p.hidden);
  if (!p.fp8) {
    for (int h = 0; h < p.hidden; ++h) values[h] = LoadAsFloat(x_row, dtype, h);
    return values;
  }
  std::vector<uint8_t> q(p.hidden), scales(p.scale_row_bytes());
  QuantizeRowE4m3(reinterpret_cast<const uint16_t*>(x_row), p.hidden, p.scales(), q.data(),
                  scales.data());
  for (int h = 0; h < p.hidden; ++h) {
    values[h] = DequantizedValue(p, q.data(), scales.data(), h);
  }
  return values;
}

}  // namespace

DType Problem::token_dtype() const {
  // UNSPECIFIED means bf16, as in the daemon's group defaults.
  const StatusOr<DType> token = DTypeFromProto(dtype, "dtype");
  return token.ok() ? *token : DType::kBf16;
}

size_t Problem::row_bytes() const { return static_cast<size_t>(hidden) * DTypeSize(token_dtype()); }

v1::GroupConfig Problem::Config(const std::string& name) const {
  v1::GroupConfig config;
  config.set_name(name);
  config.set_world_size(ranks);
  config.set_experts(experts);
  config.set_hidden(hidden);
  config.set_max_tokens_per_rank(max_tokens);
  config.set_top_k(top_k);
  config.set_dtype(dtype);
  config.set_layout(layout);
  config.set_expert_capacity(expert_capacity);
  config.set_algorithm(algorithm);
  config.set_recv_capacity(recv_capacity);
  config.set_spans_nodes(spans_nodes);
  if (fp8) {
    config.set_dispatch_dtype(v1::DTYPE_FP8_E4M3);
    config.set_scale_format(scale_format);
  }
  return config;
}

int TokensFor(const Problem& p, int rank, int iteration) {
  // Full, then varying counts in [1, T]; rank-dependent so ranks disagree on n.
  if (iteration == 0) return p.max_tokens;
  return 1 + static_cast<int>(Mix(rank, iteration, 77) % static_cast<uint64_t>(p.max_tokens));
}

RankInputs MakeInputs(const Problem& p, uint64_t seed, int rank, int iteration, int n,
                      bool dyadic_weights) {
  RankInputs in;
  in.num_tokens = n;
  const DType dtype = p.token_dtype();
  in.x.assign(static_cast<size_t>(n) * p.row_bytes(), 0);
  for (int t = 0; t < n; ++t) {
    for (int h = 0; h < p.hidden; ++h) {
      const int v = static_cast<int>(Mix(seed, rank, iteration, t, h) % 17) - 8;  // [-8, 8]
      StoreFromFloat(in.x.data() + t * p.row_bytes(), dtype, h, static_cast<float>(v) / 8.0f);
    }
  }
  const int K = p.top_k;
  in.topk_idx.assign(static_cast<size_t>(n) * K, -1);
  in.weights.assign(static_cast<size_t>(n) * K, 0.0f);
  for (int t = 0; t < n; ++t) {
    int32_t* idx = &in.topk_idx[static_cast<size_t>(t) * K];
    for (int k = 0; k < K; ++k) {
      const uint64_t r = Mix(seed + 1, rank, iteration, t, k);
      in.weights[static_cast<size_t>(t) * K + k] =
          dyadic_weights ? static_cast<float>(1 + (r >> 8) % 8) / 8.0f
                         : 0.05f + static_cast<float>((r >> 40) % (1 << 20)) / (1 << 20);
      if (r % 8 == 0) continue;  // -1: this slot selects no expert
      for (uint64_t attempt = 0;; ++attempt) {
        const int e = static_cast<int>(Mix(r, attempt) % static_cast<uint64_t>(p.experts));
        bool taken = false;
        for (int j = 0; j < k; ++j) taken = taken || idx[j] == e;
        if (!taken) {
          idx[k] = e;
          break;
        }
      }
    }
  }
  return in;
}

void QuantizeInputs(const Problem& p, const RankInputs& in, std::vector<uint8_t>* q,
                    std::vector<uint8_t>* scales) {
  const size_t n = static_cast<size_t>(in.num_tokens);
  q->assign(n * p.hidden, 0);
  scales->assign(n * p.scale_row_bytes(), 0);
  for (size_t t = 0; t < n; ++t) {
    QuantizeRowE4m3(reinterpret_cast<const uint16_t*>(in.x.data() + t * p.row_bytes()), p.hidden,
                    p.scales(), q->data() + t * p.hidden, scales->data() + t * p.scale_row_bytes());
  }
}

void RunExperts(const Problem& p, int rank, const HandleView& view, const ExpertFactor& factor,
                void* expert_out) {
  const DType dtype = p.token_dtype();
  const int H = p.hidden, K = p.top_k;
  // Input element h of received row `row`, and where the expert writes that row.
  auto input = [&](int64_t row, int h) {
    if (!p.fp8) return LoadAsFloat(view.recv_row(row), dtype, h);
    return DequantizedValue(p, static_cast<const uint8_t*>(view.recv_row(row)),
                            view.recv_scales_row(row), h);
  };
  auto output = [&](int64_t row) -> void* {
    if (!p.fp8) return view.recv_row(row);
    return static_cast<char*>(expert_out) + static_cast<size_t>(row) * p.row_bytes();
  };
  if (p.expert_major()) {
    const int L = p.local_experts();
    for (int l = 0; l < L; ++l) {
      const float f = factor(rank * L + l);
      const int32_t first = view.recv_offsets()[l];
      for (int32_t row = first; row < first + view.recv_counts()[l]; ++row) {
        void* z = output(row);
        for (int h = 0; h < H; ++h) StoreFromFloat(z, dtype, h, input(row, h) * f);
      }
    }
    return;
  }
  std::vector<float> acc(H);
  // High-throughput rows of source s are packed at recv_rank_offsets[s] with local expert ids.
  const int expert_base = p.high_throughput() ? rank * p.local_experts() : 0;
  for (int s = 0; s < p.ranks; ++s) {
    const int rows = p.high_throughput() ? view.recv_rank_counts()[s] : view.recv_counts()[s];
    for (int t = 0; t < rows; ++t) {
      const int64_t row = p.high_throughput() ? int64_t{view.recv_rank_offsets()[s]} + t
                                              : static_cast<int64_t>(s) * p.max_tokens + t;
      const int32_t* idx = view.recv_topk_idx() + row * K;
      const float* w = view.recv_topk_weights() + row * K;
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int k = 0; k < K; ++k) {
        if (idx[k] < 0) continue;
        const float f = factor(expert_base + idx[k]);
        for (int h = 0; h < H; ++h) {
          const float product = w[k] * Round(dtype, input(row, h) * f);
          acc[h] = acc[h] + product;
        }
      }
      void* z = output(row);
      for (int h = 0; h < H; ++h) StoreFromFloat(z, dtype, h, acc[h]);
    }
  }
}

std::vector<uint8_t> ExpectedOutput(const Problem& p, const RankInputs& in,
                                    const ExpertFactor& factor) {
  const DType dtype = p.token_dtype();
  const int H = p.hidden, K = p.top_k;
  std::vector<uint8_t> out(static_cast<size_t>(in.num_tokens) * p.row_bytes());
  std::vector<float> acc(H), pre(H);
  for (int t = 0; t < in.num_tokens; ++t) {
    const std::vector<float> x = DispatchedValues(p, in.x.data() + t * p.row_bytes());
    const int32_t* idx = &in.topk_idx[static_cast<size_t>(t) * K];
    const float* w = &in.weights[static_cast<size_t>(t) * K];
    auto expert_value = [&](int e, int h) { return Round(dtype, x[h] * factor(e)); };
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int k = 0; k < K; ++k) {
      if (idx[k] < 0) continue;
      if (p.expert_major()) {
        for (int h = 0; h < H; ++h) {
          const float product = w[k] * expert_value(idx[k], h);
          acc[h] = acc[h] + product;
        }
        continue;
      }
      // Rank-major, high-throughput: destination rank d contributes once, at its first k,
      // weight 1.
      const int d = p.rank_of(idx[k]);
      bool first = true;
      for (int j = 0; j < k; ++j) first = first && !(idx[j] >= 0 && p.rank_of(idx[j]) == d);
      if (!first) continue;
      std::fill(pre.begin(), pre.end(), 0.0f);
      for (int j = 0; j < K; ++j) {
        if (idx[j] < 0 || p.rank_of(idx[j]) != d) continue;
        for (int h = 0; h < H; ++h) {
          const float product = w[j] * expert_value(idx[j], h);
          pre[h] = pre[h] + product;
        }
      }
      for (int h = 0; h < H; ++h) {
        const float product = 1.0f * Round(dtype, pre[h]);
        acc[h] = acc[h] + product;
      }
    }
    for (int h = 0; h < H; ++h) StoreFromFloat(out.data() + t * p.row_bytes(), dtype, h, acc[h]);
  }
  return out;
}

int64_t FirstMismatch(const Problem& p, int n, const void* actual, const void* expected) {
  const size_t elem = DTypeSize(p.token_dtype());
  const auto* a = static_cast<const uint8_t*>(actual);
  const auto* e = static_cast<const uint8_t*>(expected);
  const int64_t total = static_cast<int64_t>(n) * p.hidden;
  for (int64_t i = 0; i < total; ++i) {
    if (std::memcmp(a + i * elem, e + i * elem, elem) != 0) return i;
  }
  return -1;
}

std::string DescribeElement(const Problem& p, int64_t index, const void* actual,
                            const void* expected) {
  const DType dtype = p.token_dtype();
  const size_t elem = DTypeSize(dtype);
  auto bits = [elem](const void* base, int64_t i) {
    uint32_t b = 0;
    std::memcpy(&b, static_cast<const uint8_t*>(base) + i * elem, elem);
    return b;
  };
  return fmt::format("token {}, element {}: got {} ({:#x}), expected {} ({:#x})", index / p.hidden,
                     index % p.hidden, LoadAsFloat(actual, dtype, index), bits(actual, index),
                     LoadAsFloat(expected, dtype, index), bits(expected, index));
}

}  // namespace epd::example
