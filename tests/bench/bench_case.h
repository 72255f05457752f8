// What epd-bench measures: the cases (group shape + routing), the per-op samples of each
// mode, and their summary (median, p99, logical bandwidth).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "daemon/core/group_config.h"
#include "tests/bench/routing.h"

namespace epd::bench {

struct Case {
  int index = 0;
  int ranks = 0;
  int hidden = 7168;
  int top_k = 8;
  int experts = 256;
  int max_tokens = 128;  // T: handle size
  int tokens = 128;      // n: tokens per rank in every iteration (n <= T)
  DType dtype = DType::kBf16;
  Layout layout = Layout::kExpertMajor;
  Algorithm algorithm = Algorithm::kLowLatency;
  int expert_capacity = 0;  // 0: R * T (low-latency)
  int sm_budget = 0;        // high-throughput SMs; 0: the group default
  RoutingSpec routing;
  // What dispatch moves: the token dtype, or fp8 e4m3 + block scales quantized by the daemon
  // from bf16 x, or (prequantized) quantized by the frontend and passed with x_scales.
  DispatchFormat dispatch_format = DispatchFormat::kTokenDType;
  ScaleFormat scale_format = ScaleFormat::kFp32;
  bool prequantized = false;

  GroupConfig Config(const std::string& name) const;
  // "H7168 K8 E256 n128 bf16 expert LL random", with " fp8-fp32" / " fp8-fp32-pre" for fp8.
  std::string Label() const;
  size_t row_bytes() const { return static_cast<size_t>(hidden) * DTypeSize(dtype); }
  bool fp8() const { return dispatch_format == DispatchFormat::kFp8E4m3; }
};

// A dispatch payload of the case list: token dtype, fp8 quantized by the daemon, fp8
// pre-quantized by the frontend ("token", "fp8", "fp8-pre").
struct Payload {
  DispatchFormat format = DispatchFormat::kTokenDType;
  bool prequantized = false;
};
StatusOr<Payload> ParsePayload(std::string_view name);

// Bytes one rank's op actually moves: dispatch writes every received row (expert-major: one per
// valid selection; rank-major: one per (token, destination rank)) with its scales; combine
// reads the same rows of expert output in the token dtype.
struct MovedBytes {
  double dispatch = 0, combine = 0;
};
MovedBytes BytesMoved(const Case& c, const RankRouting& routing);

enum class Op { kUpdate = 0, kDispatch = 1, kCombine = 2 };
constexpr int kNumOps = 3;
const char* OpName(Op op);

// Modes: (a) inproc, (b) daemon_fenced, (c) daemon_blocking, and the baselines.
inline constexpr const char* kModeInproc = "inproc";
inline constexpr const char* kModeFenced = "daemon_fenced";
inline constexpr const char* kModeBlocking = "daemon_blocking";
inline constexpr const char* kModeFrontendLaunched = "frontend_launched";
inline constexpr const char* kModeNccl = "nccl_baseline";
inline constexpr const char* kModeTorch = "torch_all_to_all";

struct OpSummary {
  int iterations = 0;
  double median_us = 0, p99_us = 0, mean_us = 0, min_us = 0, max_us = 0;
  double gbps = 0;  // logical: valid selections per rank * H * bytes / median time
  double moved_bytes = 0;  // per rank per op, mean over ranks (BytesMoved); 0 for update
};

// Samples of one (case, mode): per op, per iteration, per rank, microseconds.
struct ModeSamples {
  std::vector<std::vector<double>> per_rank[kNumOps];  // [op][rank][iteration]
};

struct Result {
  Case bench_case;
  std::string mode;
  std::string timing;  // "gpu_events" or "host_clock"
  uint64_t handle_bytes = 0;  // per rank: the daemon's HandleInfo.held_bytes, else the layout's
  double selections_per_rank = 0;      // mean valid (token, expert) selections
  // Spanning groups: group payload bytes a rank's daemon sent per layer and rank (cluster view;
  // 0: not measured).
  double wire_bytes = 0;
  std::map<std::string, OpSummary> ops;  // by OpName
  std::string check = "skipped";       // "passed", "skipped" or "failed: ..."
  std::string error;                   // non-empty when the mode failed for this case
};

// Per iteration the op's time is that of its slowest rank (a collective ends when its last
// rank ends); median / p99 over iterations.
OpSummary Summarize(const std::vector<std::vector<double>>& per_rank, double bytes_per_rank);

// Logical bytes per rank of dispatch and combine: valid selections * H * element bytes.
double LogicalBytes(const Case& c, double selections_per_rank);

struct CaseListOptions {
  int ranks = 2;
  std::vector<int> tokens = {128};
  std::vector<int> hidden = {7168};
  std::vector<Layout> layouts = {Layout::kExpertMajor};
  std::vector<RoutingKind> routings = {RoutingKind::kRandom, RoutingKind::kSkewed};
  // tokens 1..8192 at H 7168, H 2048..8192 at n 128; low-latency in both layouts and
  // high-throughput
  bool sweep = false;
  int top_k = 8;
  int experts = 256;
  DType dtype = DType::kBf16;
  Algorithm algorithm = Algorithm::kLowLatency;
  bool auto_algorithm = false;  // per case, GroupConfig::ResolveAlgorithm's rule on its tokens
  int expert_capacity = 0;
  int sm_budget = 0;  // high-throughput cases
  RoutingSpec routing;
  std::vector<Payload> payloads = {Payload{}};
  // fp8 payloads run once per scale format (side by side in one run); the token dtype once.
  std::vector<ScaleFormat> scale_formats = {ScaleFormat::kFp32};
};
std::vector<Case> BuildCases(const CaseListOptions& options);

// Expected combine output of rank r when the experts are the identity (combine reads the
// dispatched rows in place): acc = acc + w * x in k order (fp32, no FMA), rounded to the
// token dtype; rank-major counts each destination rank once with weight 1. Compares tokens
// t = 0, stride, 2 * stride, ... Returns "passed" or "failed: ...".
std::string CheckCombine(const Case& c, int rank, const RankRouting& routing, const void* out,
                         int token_stride);
// Token stride of the correctness check: about 2^22 multiply-adds per rank.
int CheckStride(const Case& c);
// Fills x [n, H] of rank r with TokenValue in the case's dtype.
void FillTokens(const Case& c, int rank, void* x);
// fp8: the frontend-side quantization of rank r's tokens (common/fp8.h), q [n, H] e4m3 and
// scales [n, H / 128].
void QuantizeTokens(const Case& c, const void* x, std::vector<char>* q, std::vector<char>* scales);
// fp8: bf16 dequantized received rows [rows, H] (an identity expert's output) from e4m3 rows
// and their scales.
void DequantizeRows(const Case& c, const void* q, const void* scales, size_t rows, void* out);

}  // namespace epd::bench

namespace epd::bench {
// One case per line, whitespace-separated integers (the coordinator hands the case list to
// the frontend processes this way, so they never re-derive it).
std::string SerializeCases(const std::vector<Case>& cases);
StatusOr<std::vector<Case>> ParseCases(const std::string& text);
}  // namespace epd::bench
