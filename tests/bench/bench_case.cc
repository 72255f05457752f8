#include "tests/bench/bench_case.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <sstream>
#include <set>
#include <tuple>

namespace epd::bench {

GroupConfig Case::Config(const std::string& name) const {
  GroupConfig config;
  config.name = name;
  for (int r = 0; r < ranks; ++r) config.ranks.push_back(r);
  config.experts = experts;
  config.hidden = hidden;
  config.max_tokens_per_rank = max_tokens;
  config.top_k = top_k;
  config.dtype = dtype;
  config.algorithm = algorithm;
  config.layout = layout;
  // Each algorithm's own capacity knob; the other must stay 0 (GroupConfig::Validate).
  if (algorithm == Algorithm::kHighThroughput) {
    config.sm_budget = sm_budget;
  } else {
    config.expert_capacity = expert_capacity;
  }
  config.dispatch_format = dispatch_format;
  config.scale_format = scale_format;
  return config;
}

std::string Case::Label() const {
  const std::string payload =
      fp8() ? fmt::format(" fp8-{}{}", ScaleFormatName(scale_format), prequantized ? "-pre" : "")
            : "";
  return fmt::format("H{} K{} E{} n{} {}{} {} {} {}", hidden, top_k, experts, tokens,
                     DTypeName(dtype), payload, layout == Layout::kExpertMajor ? "expert" : "rank",
                     algorithm == Algorithm::kLowLatency ? "LL" : "HT", RoutingName(routing.kind));
}

StatusOr<Payload> ParsePayload(std::string_view name) {
  if (name == "token") return Payload{};
  if (name == "fp8") return Payload{DispatchFormat::kFp8E4m3, false};
  if (name == "fp8-pre") return Payload{DispatchFormat::kFp8E4m3, true};
  return InvalidArgumentError("unknown dispatch dtype '{}' (expected token, fp8 or fp8-pre)", name);
}

MovedBytes BytesMoved(const Case& c, const RankRouting& routing) {
  const GroupConfig config = c.Config("bytes");
  double rows = 0;
  const int L = c.experts / c.ranks;
  for (int t = 0; t < c.tokens; ++t) {
    std::vector<bool> rank_seen(c.ranks, false);
    for (int k = 0; k < c.top_k; ++k) {
      const int e = routing.topk_idx[static_cast<size_t>(t) * c.top_k + k];
      if (e < 0) continue;
      if (c.layout == Layout::kRankMajor || c.algorithm == Algorithm::kHighThroughput) {
        if (rank_seen[e / L]) continue;
        rank_seen[e / L] = true;
      }
      rows += 1;
    }
  }
  return MovedBytes{rows * static_cast<double>(config.recv_row_bytes() + config.scale_row_bytes()),
                    rows * static_cast<double>(c.row_bytes())};
}

void QuantizeTokens(const Case& c, const void* x, std::vector<char>* q, std::vector<char>* scales) {
  const GroupConfig config = c.Config("quantize");
  q->assign(std::max<size_t>(1, static_cast<size_t>(c.tokens) * c.hidden), 0);
  scales->assign(std::max<size_t>(1, c.tokens * config.scale_row_bytes()), 0);
  for (int t = 0; t < c.tokens; ++t) {
    QuantizeRowE4m3(static_cast<const uint16_t*>(x) + static_cast<size_t>(t) * c.hidden, c.hidden,
                    c.scale_format, reinterpret_cast<uint8_t*>(q->data()) + t * c.hidden,
                    scales->data() + t * config.scale_row_bytes());
  }
}

void DequantizeRows(const Case& c, const void* q, const void* scales, size_t rows, void* out) {
  const int blocks = c.hidden / kFp8BlockChannels;
  for (size_t row = 0; row < rows; ++row) {
    const auto* q_row = static_cast<const uint8_t*>(q) + row * c.hidden;
    for (int b = 0; b < blocks; ++b) {
      float scale;
      if (c.scale_format == ScaleFormat::kUe8m0) {
        scale = Ue8m0ToFloat(static_cast<const uint8_t*>(scales)[row * blocks + b]);
      } else {
        std::memcpy(&scale, static_cast<const char*>(scales) + (row * blocks + b) * 4, 4);
      }
      for (int h = b * kFp8BlockChannels; h < (b + 1) * kFp8BlockChannels; ++h) {
        StoreFromFloat(static_cast<char*>(out) + row * c.row_bytes(), c.dtype, h,
                       DecodeE4m3(q_row[h]) * scale);
      }
    }
  }
}

const char* OpName(Op op) {
  switch (op) {
    case Op::kUpdate: return "update";
    case Op::kDispatch: return "dispatch";
    case Op::kCombine: return "combine";
  }
  return "?";
}

double LogicalBytes(const Case& c, double selections_per_rank) {
  return selections_per_rank * static_cast<double>(c.row_bytes());
}

OpSummary Summarize(const std::vector<std::vector<double>>& per_rank, double bytes_per_rank) {
  OpSummary s;
  if (per_rank.empty()) return s;
  size_t iterations = per_rank[0].size();
  for (const auto& rank : per_rank) iterations = std::min(iterations, rank.size());
  if (iterations == 0) return s;
  std::vector<double> slowest(iterations, 0.0);
  for (const auto& rank : per_rank) {
    for (size_t i = 0; i < iterations; ++i) slowest[i] = std::max(slowest[i], rank[i]);
  }
  std::vector<double> sorted = slowest;
  std::sort(sorted.begin(), sorted.end());
  auto quantile = [&](double q) {
    // Nearest rank: the smallest sample with at least q of the samples at or below it.
    size_t idx = static_cast<size_t>(std::ceil(q * static_cast<double>(sorted.size())));
    idx = std::clamp<size_t>(idx, 1, sorted.size()) - 1;
    return sorted[idx];
  };
  s.iterations = static_cast<int>(iterations);
  s.median_us = sorted.size() % 2 == 1
                    ? sorted[sorted.size() / 2]
                    : 0.5 * (sorted[sorted.size() / 2 - 1] + sorted[sorted.size() / 2]);
  s.p99_us = quantile(0.99);
  s.mean_us = std::accumulate(sorted.begin(), sorted.end(), 0.0) / sorted.size();
  s.min_us = sorted.front();
  s.max_us = sorted.back();
  s.gbps = s.median_us > 0 ? bytes_per_rank / (s.median_us * 1e3) : 0.0;  // bytes/ns = GB/s
  return s;
}

std::vector<Case> BuildCases(const CaseListOptions& o) {
  // (tokens, hidden) pairs first, so a sweep is the union of its two axes, not their product.
  std::vector<std::pair<int, int>> shapes;
  if (o.sweep) {
    for (int n = 1; n <= 8192; n *= 2) shapes.emplace_back(n, 7168);
    for (int h : {2048, 4096, 6144, 7168, 8192}) shapes.emplace_back(128, h);
  } else {
    for (int n : o.tokens) {
      for (int h : o.hidden) shapes.emplace_back(n, h);
    }
  }
  std::vector<Layout> layouts = o.layouts;
  if (o.sweep) layouts = {Layout::kExpertMajor, Layout::kRankMajor};
  // The sweep measures both algorithms at every token count (the crossover AUTO's rule
  // stands on); high-throughput has one receive layout of its own.
  std::vector<Algorithm> algorithms = {o.auto_algorithm ? Algorithm::kAuto : o.algorithm};
  if (o.sweep) algorithms = {Algorithm::kLowLatency, Algorithm::kHighThroughput};
  std::set<std::tuple<int, int, int, int, int, int, int>> seen;
  std::vector<Case> cases;
  for (const auto& [n, h] : shapes) {
    for (Algorithm requested : algorithms) {
      GroupConfig resolve;
      resolve.max_tokens_per_rank = n;
      resolve.algorithm = requested;
      resolve.dispatch_format = o.payloads.front().format;
      resolve.ResolveAlgorithm();
      const Algorithm algorithm = resolve.algorithm;
      for (Layout layout : layouts) {
        if (algorithm == Algorithm::kHighThroughput) layout = Layout::kExpertMajor;
        for (RoutingKind routing : o.routings) {
          for (size_t payload = 0; payload < o.payloads.size(); ++payload) {
            const bool fp8 = o.payloads[payload].format == DispatchFormat::kFp8E4m3;
            const std::vector<ScaleFormat> formats =
                fp8 ? o.scale_formats : std::vector<ScaleFormat>{ScaleFormat::kFp32};
            for (ScaleFormat scale_format : formats) {
              if (!seen.insert({n, h, static_cast<int>(algorithm), static_cast<int>(layout),
                                static_cast<int>(routing), static_cast<int>(payload),
                                static_cast<int>(scale_format)})
                       .second) {
                continue;
              }
              Case c;
              c.index = static_cast<int>(cases.size());
              c.ranks = o.ranks;
              c.hidden = h;
              c.top_k = o.top_k;
              c.experts = o.experts;
              c.max_tokens = n;
              c.tokens = n;
              c.dtype = o.dtype;
              c.layout = layout;
              c.algorithm = algorithm;
              c.expert_capacity = o.expert_capacity;
              c.sm_budget = o.sm_budget;
              c.routing = o.routing;
              c.routing.kind = routing;
              c.dispatch_format = o.payloads[payload].format;
              c.prequantized = o.payloads[payload].prequantized;
              c.scale_format = scale_format;
              cases.push_back(c);
            }
          }
        }
      }
    }
  }
  return cases;
}

int CheckStride(const Case& c) {
  const int64_t per_token = static_cast<int64_t>(c.hidden) * c.top_k;
  const int64_t budget = int64_t{1} << 22;
  return static_cast<int>(std::max<int64_t>(1, per_token * c.tokens / budget));
}

void FillTokens(const Case& c, int rank, void* x) {
  char* base = static_cast<char*>(x);
  for (int t = 0; t < c.tokens; ++t) {
    char* row = base + static_cast<size_t>(t) * c.row_bytes();
    for (int h = 0; h < c.hidden; ++h) StoreFromFloat(row, c.dtype, h, TokenValue(rank, t, h));
  }
}

std::string CheckCombine(const Case& c, int rank, const RankRouting& routing, const void* out,
                         int token_stride) {
  const int L = c.experts / c.ranks;
  const bool weighted = c.layout == Layout::kExpertMajor && c.algorithm != Algorithm::kHighThroughput;
  std::vector<float> acc(c.hidden);
  // What an identity expert returns for token t: the token, or with fp8 its dequantized row.
  std::vector<char> token(c.row_bytes()), q, scales, dequantized(c.row_bytes());
  auto value = [&](int t, int h) {
    if (!c.fp8()) return TokenValue(rank, t, h);
    return LoadAsFloat(dequantized.data(), c.dtype, h);
  };
  for (int t = 0; t < c.tokens; t += std::max(1, token_stride)) {
    if (c.fp8()) {
      Case one = c;
      one.tokens = 1;
      for (int h = 0; h < c.hidden; ++h)
        StoreFromFloat(token.data(), c.dtype, h, TokenValue(rank, t, h));
      QuantizeTokens(one, token.data(), &q, &scales);
      DequantizeRows(one, q.data(), scales.data(), 1, dequantized.data());
    }
    std::fill(acc.begin(), acc.end(), 0.0f);
    std::vector<bool> rank_seen(c.ranks, false);
    for (int k = 0; k < c.top_k; ++k) {
      const size_t i = static_cast<size_t>(t) * c.top_k + k;
      const int e = routing.topk_idx[i];
      if (e < 0) continue;
      if (!weighted) {
        if (rank_seen[e / L]) continue;
        rank_seen[e / L] = true;
      }
      const float w = weighted ? routing.weights[i] : 1.0f;
      for (int h = 0; h < c.hidden; ++h) {
        const float product = w * value(t, h);
        acc[h] = acc[h] + product;
      }
    }
    const char* row = static_cast<const char*>(out) + static_cast<size_t>(t) * c.row_bytes();
    std::vector<char> expected(c.row_bytes());
    for (int h = 0; h < c.hidden; ++h) StoreFromFloat(expected.data(), c.dtype, h, acc[h]);
    for (int h = 0; h < c.hidden; ++h) {
      const float got = LoadAsFloat(row, c.dtype, h);
      const float want = LoadAsFloat(expected.data(), c.dtype, h);
      if (std::memcmp(&got, &want, sizeof(float)) != 0) {
        return fmt::format("failed: rank {} token {} element {}: got {} expected {}", rank, t, h,
                           got, want);
      }
    }
  }
  return "passed";
}

}  // namespace epd::bench

namespace epd::bench {

std::string SerializeCases(const std::vector<Case>& cases) {
  std::string out;
  for (const Case& c : cases) {
    out +=
        fmt::format("{} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {}\n", c.index, c.ranks,
                    c.hidden, c.top_k, c.experts, c.max_tokens, c.tokens, static_cast<int>(c.dtype),
                    static_cast<int>(c.layout), static_cast<int>(c.algorithm), c.expert_capacity,
                    static_cast<int>(c.routing.kind), c.routing.seed, c.routing.hot_experts,
                    c.routing.hot_percent, static_cast<int>(c.dispatch_format),
                    static_cast<int>(c.scale_format), c.prequantized ? 1 : 0, c.sm_budget);
  }
  return out;
}

StatusOr<std::vector<Case>> ParseCases(const std::string& text) {
  std::vector<Case> cases;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty()) continue;
    std::istringstream in(line);
    Case c;
    int dtype = 0, layout = 0, algorithm = 0, routing = 0, format = 0, scales = 0, pre = 0;
    in >> c.index >> c.ranks >> c.hidden >> c.top_k >> c.experts >> c.max_tokens >> c.tokens >>
        dtype >> layout >> algorithm >> c.expert_capacity >> routing >> c.routing.seed >>
        c.routing.hot_experts >> c.routing.hot_percent >> format >> scales >> pre >> c.sm_budget;
    if (!in) return InvalidArgumentError("bad case line '{}'", line);
    c.dtype = static_cast<DType>(dtype);
    c.layout = static_cast<Layout>(layout);
    c.algorithm = static_cast<Algorithm>(algorithm);
    c.routing.kind = static_cast<RoutingKind>(routing);
    c.dispatch_format = static_cast<DispatchFormat>(format);
    c.scale_format = static_cast<ScaleFormat>(scales);
    c.prequantized = pre != 0;
    cases.push_back(c);
  }
  return cases;
}

}  // namespace epd::bench
