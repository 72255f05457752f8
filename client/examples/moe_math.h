// What a frontend computes on its own side of a MoE layer, written independently of the
// daemon: deterministic inputs, the experts, and the expected combine output with the exact
// semantics of docs/design.md §3 (fp32 accumulation over k ascending as acc = acc + w * z, one
// rounding to the token dtype; rank-major: one pre-reduced row per destination rank, weight 1).
// Used by the example frontend and by the integration tests.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "client/epd/handle_view.h"
#include "common/dtype.h"
#include "common/fp8.h"
#include "epd/v1/types.pb.h"

namespace epd::example {

struct Problem {
  int ranks = 1;        // R
  int experts = 2;      // E
  int hidden = 64;      // H
  int max_tokens = 16;  // T
  int top_k = 2;        // K
  v1::DType dtype = v1::DTYPE_BF16;
  v1::Layout layout = v1::LAYOUT_EXPERT_MAJOR;
  int expert_capacity = 0;  // rows per expert (expert-major); 0: the group default R * T
  // ALGORITHM_HIGH_THROUGHPUT: packed rows (one per token and destination rank), combined
  // like rank-major (pre-reduced rows, weight 1); recv_capacity bounds the rows (0: R * T).
  v1::Algorithm algorithm = v1::ALGORITHM_UNSPECIFIED;
  int recv_capacity = 0;
  // FP8 dispatch (bf16 tokens, H % 128 == 0): received rows are e4m3 + per-128 scales; the
  // experts read them dequantized and write bf16 into a separate expert_out tensor.
  bool fp8 = false;
  v1::ScaleFormat scale_format = v1::SCALE_FORMAT_FP32;
  bool prequantized = false;  // fp8: the frontend quantizes x and passes x_scales
  bool spans_nodes = false;   // the group spans daemons (ranks are then global ranks)

  int local_experts() const { return experts / ranks; }
  int rank_of(int expert) const { return expert / local_experts(); }
  bool high_throughput() const { return algorithm == v1::ALGORITHM_HIGH_THROUGHPUT; }
  // The low-latency expert-major layout: weighted combine of one row per selection.
  bool expert_major() const { return layout != v1::LAYOUT_RANK_MAJOR && !high_throughput(); }
  DType token_dtype() const;
  size_t row_bytes() const;
  ScaleFormat scales() const {
    return scale_format == v1::SCALE_FORMAT_UE8M0 ? ScaleFormat::kUe8m0 : ScaleFormat::kFp32;
  }
  size_t scale_row_bytes() const {
    return fp8 ? static_cast<size_t>(hidden / kFp8BlockChannels) * ScaleBytes(scales()) : 0;
  }
  v1::GroupConfig Config(const std::string& name) const;
};

// The expert applied to every row routed to expert e: z = round(x * factor(e)) elementwise.
using ExpertFactor = std::function<float(int expert)>;
inline float Identity(int) { return 1.0f; }
inline float ScaleByExpertPlusOne(int expert) { return static_cast<float>(expert + 1); }

// One rank's inputs of one iteration: x [n, H] in the token dtype, topk [n, K] int32 with
// some -1 entries, weights [n, K] f32.
struct RankInputs {
  int num_tokens = 0;
  std::vector<uint8_t> x;
  std::vector<int32_t> topk_idx;
  std::vector<float> weights;
};

// Deterministic in (seed, rank, iteration). Token values are multiples of 1/8 in [-1, 1]
// (exact in every dtype). `dyadic_weights`: weights in {1/8, ..., 1} so that every product
// and sum is exact in fp32 and out = round(x * sum of weights) exactly.
RankInputs MakeInputs(const Problem& p, uint64_t seed, int rank, int iteration, int num_tokens,
                      bool dyadic_weights);

// Token count of `rank` in `iteration`: varies in [1, T].
int TokensFor(const Problem& p, int rank, int iteration);

// Quantizes rows [0, n) of `in.x` (bf16) as the daemon would (common/fp8.h): e4m3 [n, H]
// and scales [n, H / 128] of the problem's scale format.
void QuantizeInputs(const Problem& p, const RankInputs& in, std::vector<uint8_t>* q,
                    std::vector<uint8_t>* scales);

// Element h of an fp8 row as the experts read it: bf16(decode(q_row[h]) * its block's scale).
float DequantizedValue(const Problem& p, const uint8_t* q_row, const void* scale_row, int h);

// Runs the experts of `rank` on its received rows (expert-major: row of expert e scaled;
// rank-major and high-throughput: the pre-reduced row sum over k of w * round(x * factor(e)) for the experts of
// this rank, rounded once): in place in the handle's recv_x, or with fp8 from the dequantized
// rows (bf16(e4m3 * scale)) into `expert_out` [recv_rows, H] bf16.
void RunExperts(const Problem& p, int rank, const HandleView& view, const ExpertFactor& factor,
                void* expert_out = nullptr);

// Expected combine output [n, H] (token dtype bytes) of one rank's inputs.
std::vector<uint8_t> ExpectedOutput(const Problem& p, const RankInputs& in,
                                    const ExpertFactor& factor);

// First differing element of two [n, H] outputs, or -1 when they are bit-identical.
int64_t FirstMismatch(const Problem& p, int n, const void* actual, const void* expected);
// "token t, element h: got G (0xBITS), expected E (0xBITS)" for an element index.
std::string DescribeElement(const Problem& p, int64_t index, const void* actual,
                            const void* expected);

}  // namespace epd::example
