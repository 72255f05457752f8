// The kernels of groups spanning daemons (kernels/span_exchange.cuh) in one process, with the
// NCCL exchanges replaced by device copies of what they send (whole messages; high-throughput:
// headers, then the rows announced, the rest of a message left as garbage): every rank's receive
// region and combine output equal the cpu reference's byte for byte (both low-latency layouts
// and high-throughput's packed one, bf16 and fp32, n in {0, 1, T-1, T}, all -1, a hot expert,
// a token selecting one expert twice; fp8 dispatch quantized by the pack kernel or copied
// pre-quantized, both scale formats), and the destination's plan reports a capacity (or row
// capacity) overflow and a source's abandon. Isolates the
// kernels from NCCL: the daemon-level test is tests/gpu/spanning_test.cc.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "common/fp8.h"
#include "daemon/backends/cpu/reference_ops.h"
#include "daemon/backends/cuda/span_support.h"
#include "kernels/launch_grid.h"
#include "kernels/span_exchange.cuh"
#include "tests/gpu/gpu_test_env.h"

namespace epd::gputest {
namespace {

constexpr int kDevice = 0;
enum class Routing { kRandom, kAllNone, kHotExpert, kRepeatedExpert };

GroupConfig ConfigOf(Layout layout, DType dtype, int capacity = 0,
                     Algorithm algorithm = Algorithm::kLowLatency) {
  GroupConfig c;
  c.name = "span-kernels";
  c.ranks = {0, 1, 2};
  c.experts = 6;
  c.hidden = 64;
  c.max_tokens_per_rank = 8;
  c.top_k = 3;
  c.dtype = dtype;
  c.layout = layout;
  c.algorithm = algorithm;
  if (algorithm == Algorithm::kHighThroughput) {
    c.recv_capacity = capacity;
  } else {
    c.expert_capacity = capacity;
  }
  c.spans_nodes = true;
  c.span = GroupConfig::Span{0, 3, 1};
  return c;
}

// One rank's host-side routing and tokens, and its device buffers.
struct Rank {
  int n = 0;
  std::vector<int32_t> ids, local_rank, counts;
  std::vector<int32_t> dest_row, dest_counts;  // high-throughput
  std::vector<float> weights;
  std::vector<char> x;
  // fp8 dispatch: the frontend's e4m3 rows and scales (kPayloadPrequantized), else x is bf16
  // and the pack kernel quantizes it (kPayloadQuantize).
  int payload = kernels::kPayloadCopy;
  std::vector<uint8_t> xq;
  std::vector<char> x_scales;
  std::unique_ptr<DeviceBuffer> d_ids, d_weights, d_local_rank, d_counts, d_n, d_x;
  std::unique_ptr<DeviceBuffer> d_dest_row, d_dest_counts, d_xq, d_x_scales;
  std::unique_ptr<DeviceBuffer> send, recv, plan, ret_send, ret_recv, region, out;
};

void MakeRouting(const GroupConfig& c, Routing routing, int rank, int n, Rank* r) {
  const int T = c.max_tokens_per_rank, K = c.top_k, E = c.experts;
  std::mt19937 rng(1000 + rank * 17 + n);
  r->n = n;
  r->ids.assign(static_cast<size_t>(T) * K, -1);
  r->weights.assign(static_cast<size_t>(T) * K, 0.0f);
  for (int t = 0; t < n; ++t) {
    for (int k = 0; k < K; ++k) {
      int32_t id = static_cast<int32_t>(rng() % (E + 1)) - 1;
      if (routing == Routing::kAllNone) id = -1;
      if (routing == Routing::kHotExpert) id = k == 0 ? 0 : (id == 0 ? -1 : id);
      if (routing == Routing::kRepeatedExpert) id = k < 2 ? (t + rank) % E : -1;
      r->ids[t * K + k] = id;
      r->weights[t * K + k] = static_cast<float>(rng() % 13 + 1) / 7.0f;
    }
  }
  // The routing bind's outputs (kernels/routing.cuh): per-expert counts and each selection's
  // index among its expert's selections in (t, k) order; high-throughput counts a token once
  // per expert (a repeat gets -1) and plans each token's index among the rows to each rank.
  const bool ht = c.high_throughput();
  const int R = c.world_size(), L = c.local_experts();
  r->counts.assign(E, 0);
  r->local_rank.assign(static_cast<size_t>(T) * K, -1);
  for (int i = 0; i < n * K; ++i) {
    const int32_t id = r->ids[i];
    bool repeat = false;
    for (int j = i - i % K; j < i && ht; ++j) repeat = repeat || r->ids[j] == id;
    if (id >= 0 && !repeat) r->local_rank[i] = r->counts[id]++;
  }
  r->dest_row.assign(static_cast<size_t>(T) * R, -1);
  r->dest_counts.assign(R, 0);
  for (int t = 0; t < n; ++t) {
    for (int d = 0; d < R; ++d) {
      bool goes = false;
      for (int k = 0; k < K; ++k)
        goes = goes || (r->ids[t * K + k] >= 0 && r->ids[t * K + k] / L == d);
      if (goes) r->dest_row[t * R + d] = r->dest_counts[d]++;
    }
  }
  const size_t row = static_cast<size_t>(c.hidden) * DTypeSize(c.dtype);
  r->x.assign(static_cast<size_t>(T) * row, 0);
  for (int t = 0; t < n; ++t) {
    for (int h = 0; h < c.hidden; ++h) {
      StoreFromFloat(r->x.data() + t * row, c.dtype, h,
                     static_cast<float>(static_cast<int>(rng() % 17) - 8) / 8.0f);
    }
  }
}

std::unique_ptr<DeviceBuffer> Upload(const void* data, size_t bytes) {
  auto buffer = std::make_unique<DeviceBuffer>(kDevice, std::max<size_t>(bytes, 16));
  std::vector<char> zeros(buffer->size(), 0);
  buffer->Upload(zeros.data(), zeros.size());
  if (data != nullptr && bytes > 0) buffer->Upload(data, bytes);
  return buffer;
}

std::unique_ptr<DeviceBuffer> Zeroed(size_t bytes) { return Upload(nullptr, bytes); }

// `bytes` from `offset` into message `index` of `from` copied to message `slot` of `to`, messages
// `stride` apart (what the NCCL exchange does).
void Move(const DeviceBuffer& from, int index, DeviceBuffer& to, int slot, int64_t stride,
          int64_t offset, int64_t bytes) {
  ASSERT_EQ(cudaMemcpy(static_cast<char*>(to.data()) + slot * stride + offset,
                       static_cast<const char*>(from.data()) + index * stride + offset, bytes,
                       cudaMemcpyDeviceToDevice),
            cudaSuccess);
}

// High-throughput sends only the rows routed (kernels/span_messages.h): the rest of a received
// message holds this, so that a kernel reading past them is caught.
constexpr int kUnsentByte = 0xA5;

// The rows of source s's message to d: what the backend reads from s's header.
int64_t RowsSent(const std::vector<Rank>& ranks, int s, int d, int abandoning) {
  return s == abandoning ? 0 : ranks[s].dest_counts[d];
}

// Expert-major low-latency: s's selections of d's experts, which d's return message carries.
int64_t SelectionsSent(const GroupConfig& c, const std::vector<Rank>& ranks, int s, int d) {
  const int L = c.local_experts();
  int64_t selections = 0;
  for (int e = d * L; e < (d + 1) * L; ++e) selections += ranks[s].counts[e];
  return selections;
}

class SpanKernelsTest : public ::testing::Test {
 protected:
  void SetUp() override { EPD_REQUIRE_GPUS(1); }

  // Dispatch of every rank (rank `abandoning` gives the op up), then the plan's errors.
  void Dispatch(const GroupConfig& c, std::vector<Rank>& ranks, int abandoning,
                std::vector<kernels::DeviceError>* errors) {
    const int R = c.world_size();
    const HandleLayout layout = ComputeHandleLayout(c);
    for (int s = 0; s < R; ++s) {
      Rank& r = ranks[s];
      const kernels::SpanShape shape = cuda::SpanShapeOf(c, s);
      r.d_ids = Upload(r.ids.data(), r.ids.size() * 4);
      r.d_weights = Upload(r.weights.data(), r.weights.size() * 4);
      r.d_local_rank = Upload(r.local_rank.data(), r.local_rank.size() * 4);
      r.d_counts = Upload(r.counts.data(), r.counts.size() * 4);
      r.d_n = Upload(&r.n, 4);
      r.d_x = Upload(r.x.data(), r.x.size());
      r.d_dest_row = Upload(r.dest_row.data(), r.dest_row.size() * 4);
      r.d_dest_counts = Upload(r.dest_counts.data(), r.dest_counts.size() * 4);
      r.d_xq = Upload(r.xq.data(), r.xq.size());
      r.d_x_scales = Upload(r.x_scales.data(), r.x_scales.size());
      r.send = Zeroed(R * shape.dispatch.bytes);
      r.recv = Zeroed(R * shape.dispatch.bytes);
      if (c.high_throughput()) {
        ASSERT_EQ(cudaMemset(r.recv->data(), kUnsentByte, r.recv->size()), cudaSuccess);
      }
      r.plan = Zeroed(kernels::SpanPlanWords(c.local_experts(), R) * 4);
      r.ret_send = Zeroed(R * shape.ret.bytes);
      r.ret_recv = Zeroed(R * shape.ret.bytes);
      r.region = Zeroed(layout.exported_bytes);
      kernels::SpanPackParams pack;
      pack.shape = shape;
      pack.topk_idx = static_cast<const int32_t*>(r.d_ids->data());
      pack.topk_weights = static_cast<const float*>(r.d_weights->data());
      pack.local_rank = static_cast<const int32_t*>(r.d_local_rank->data());
      pack.expert_counts = static_cast<const int32_t*>(r.d_counts->data());
      pack.bound_tokens = static_cast<const int32_t*>(r.d_n->data());
      pack.dest_row = static_cast<const int32_t*>(r.d_dest_row->data());
      pack.dest_counts = static_cast<const int32_t*>(r.d_dest_counts->data());
      pack.payload = r.payload;
      pack.x = r.payload == kernels::kPayloadPrequantized ? r.d_xq->data() : r.d_x->data();
      pack.x_scales = r.d_x_scales->data();
      pack.send = static_cast<char*>(r.send->data());
      pack.recv = static_cast<char*>(r.recv->data());
      pack.abandoned = s == abandoning ? 1 : 0;
      ASSERT_EQ(kernels::LaunchSpanPack(pack, nullptr), cudaSuccess);
    }
    const kernels::SpanDispatchMessage m = cuda::SpanDispatchMessageOf(c);
    for (int s = 0; s < R; ++s) {
      for (int d = 0; d < R; ++d) {
        if (s == d) continue;
        if (!c.high_throughput()) {
          Move(*ranks[s].send, d, *ranks[d].recv, s, m.bytes, 0, m.bytes);
          continue;
        }
        // Headers first, then entries, scales and the rows the header announced.
        Move(*ranks[s].send, d, *ranks[d].recv, s, m.bytes, 0, m.entries_offset);
        Move(*ranks[s].send, d, *ranks[d].recv, s, m.bytes, m.entries_offset,
             kernels::SpanDispatchBodyBytes(m, RowsSent(ranks, s, d, abandoning)));
      }
    }
    errors->assign(R, kernels::DeviceError{});
    kernels::DeviceError* records = nullptr;
    ASSERT_EQ(cudaMallocHost(&records, sizeof(kernels::DeviceError) * R), cudaSuccess);
    std::memset(records, 0, sizeof(kernels::DeviceError) * R);
    // Expert-major low-latency: the plan kernel hands every rank's received headers to the host.
    const int64_t header_words = kernels::SpanHeaderWords(c.experts, R);
    const bool hands_headers = !c.high_throughput() && c.layout == Layout::kExpertMajor;
    int32_t* host_headers = nullptr;
    ASSERT_EQ(cudaMallocHost(&host_headers, R * R * header_words * 4), cudaSuccess);
    std::memset(host_headers, 0xff, R * R * header_words * 4);
    for (int d = 0; d < R; ++d) {
      if (d == abandoning) continue;
      Rank& r = ranks[d];
      const reference::ReceiveBuffers b = reference::ReceiveBuffersAt(r.region->data(), layout);
      kernels::SpanAssembleParams p;
      p.shape = cuda::SpanShapeOf(c, d);
      p.capacity = c.high_throughput() ? c.recv_row_capacity() : c.capacity();
      p.recv = static_cast<const char*>(r.recv->data());
      p.plan = static_cast<int32_t*>(r.plan->data());
      p.recv_x = b.recv_x;
      p.recv_src = b.recv_src;
      p.recv_weights = b.recv_weights;
      p.recv_topk_idx = b.recv_topk_idx;
      p.recv_topk_weights = b.recv_topk_weights;
      p.recv_counts = b.recv_counts;
      p.recv_offsets = b.recv_offsets;
      p.recv_rank_counts = b.recv_rank_counts;
      p.recv_rank_offsets = b.recv_rank_offsets;
      p.expert_rows = b.expert_rows;
      p.expert_rows_entries = static_cast<int64_t>(layout.expert_rows_entries);
      p.recv_scales = b.recv_scales;
      if (hands_headers) p.host_headers = host_headers + d * R * header_words;
      p.seq = 1;
      p.error = &records[d];
      ASSERT_EQ(kernels::LaunchSpanAssemble(p, nullptr), cudaSuccess);
    }
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    for (int d = 0; d < R; ++d) (*errors)[d] = records[d];
    cudaFreeHost(records);
    for (int d = 0; d < R && hands_headers; ++d) {
      if (d == abandoning) continue;
      for (int s = 0; s < R; ++s) {
        std::vector<int32_t> header(header_words);
        ASSERT_EQ(
            cudaMemcpy(header.data(), static_cast<const char*>(ranks[d].recv->data()) + s * m.bytes,
                       header_words * 4, cudaMemcpyDeviceToHost),
            cudaSuccess);
        EXPECT_EQ(
            std::memcmp(header.data(), host_headers + (d * R + s) * header_words, header_words * 4),
            0)
            << "rank " << d << "'s host copy of rank " << s << "'s header";
      }
    }
    cudaFreeHost(host_headers);
  }

  // Expert outputs: every received row rewritten with values of its own (the same bytes on
  // the device and in the reference), then every rank's combine.
  void Combine(const GroupConfig& c, std::vector<Rank>& ranks,
               std::vector<std::vector<char>>& reference_regions) {
    const int R = c.world_size(), K = c.top_k;
    const HandleLayout layout = ComputeHandleLayout(c);
    const size_t row = static_cast<size_t>(c.hidden) * DTypeSize(c.dtype);
    const bool exact_returns = c.high_throughput() || c.layout == Layout::kExpertMajor;
    for (int d = 0; d < R && exact_returns; ++d) {  // before its own return lands there
      ASSERT_EQ(cudaMemset(ranks[d].ret_recv->data(), kUnsentByte, ranks[d].ret_recv->size()),
                cudaSuccess);
    }
    for (int d = 0; d < R; ++d) {
      char* recv_x = reference_regions[d].data() + layout.recv_x_offset;
      for (size_t i = 0; i < layout.recv_rows; ++i) {
        for (int h = 0; h < c.hidden; ++h) {
          const float v = LoadAsFloat(recv_x + i * row, c.dtype, h);
          StoreFromFloat(recv_x + i * row, c.dtype, h, v * 0.5f + static_cast<float>(i % 5));
        }
      }
      ranks[d].region->Upload(reference_regions[d].data(), reference_regions[d].size());
      kernels::SpanReturnParams p;
      p.shape = cuda::SpanShapeOf(c, d);
      p.recv = static_cast<const char*>(ranks[d].recv->data());
      p.plan = static_cast<const int32_t*>(ranks[d].plan->data());
      p.expert_out = static_cast<char*>(ranks[d].region->data()) + layout.recv_x_offset;
      p.recv_rows = static_cast<int64_t>(layout.recv_rows);
      p.send = static_cast<char*>(ranks[d].ret_send->data());
      p.recv_ret = static_cast<char*>(ranks[d].ret_recv->data());
      ASSERT_EQ(kernels::LaunchSpanReturn(p, nullptr), cudaSuccess);
    }
    const kernels::SpanReturnMessage ret = cuda::SpanReturnMessageOf(c);
    for (int d = 0; d < R; ++d) {
      for (int s = 0; s < R; ++s) {
        if (s == d) continue;
        // As many rows back as the dispatch brought: rows (high-throughput) or selections
        // (expert-major); rank-major whole messages. Where a message carries nothing the
        // receiving buffer keeps kUnsentByte, so a row read from there fails the comparison.
        const int64_t bytes = c.high_throughput()
                                  ? kernels::SpanReturnBytes(ret, RowsSent(ranks, s, d, -1))
                              : c.layout == Layout::kExpertMajor
                                  ? kernels::SpanReturnBytes(ret, SelectionsSent(c, ranks, s, d))
                                  : ret.bytes;
        Move(*ranks[d].ret_send, s, *ranks[s].ret_recv, d, ret.bytes, 0, bytes);
      }
    }
    std::vector<reference::SourceRank> sources(R);
    for (int s = 0; s < R; ++s) {
      sources[s] = {
          ranks[s].n, nullptr, ranks[s].ids.data(), ranks[s].weights.data(), ranks[s].counts.data(),
          nullptr};
    }
    std::vector<const void*> expert_out(R);
    for (int d = 0; d < R; ++d) expert_out[d] = reference_regions[d].data() + layout.recv_x_offset;
    for (int s = 0; s < R; ++s) {
      Rank& r = ranks[s];
      r.out = Zeroed(static_cast<size_t>(c.max_tokens_per_rank) * row);
      kernels::SpanReduceParams p;
      p.shape = cuda::SpanShapeOf(c, s);
      p.token_type = kernels::TokenTypeOf(c.dtype);
      p.recv_ret = static_cast<const char*>(r.ret_recv->data());
      p.topk_idx = static_cast<const int32_t*>(r.d_ids->data());
      p.topk_weights = static_cast<const float*>(r.d_weights->data());
      p.bound_tokens = static_cast<const int32_t*>(r.d_n->data());
      p.dest_row = static_cast<const int32_t*>(r.d_dest_row->data());
      p.local_rank = static_cast<const int32_t*>(r.d_local_rank->data());
      p.expert_counts = static_cast<const int32_t*>(r.d_counts->data());
      p.out = r.out->data();
      p.seq = 2;
      ASSERT_EQ(kernels::LaunchSpanReduce(p, nullptr), cudaSuccess);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      std::vector<int32_t> slots(static_cast<size_t>(c.max_tokens_per_rank) * K);
      reference::ComputeSlots(c, s, sources, slots.data());
      std::vector<char> expected(static_cast<size_t>(c.max_tokens_per_rank) * row, 0);
      reference::Combine(c, sources[s], slots.data(), expert_out, expected.data());
      std::vector<char> got(expected.size());
      r.out->Download(got.data(), got.size());
      EXPECT_EQ(std::memcmp(got.data(), expected.data(), static_cast<size_t>(r.n) * row), 0)
          << "combine output of rank " << s;
    }
  }

  void RunCase(Layout layout, DType dtype, Routing routing, std::vector<int> tokens,
               Algorithm algorithm = Algorithm::kLowLatency) {
    const GroupConfig c = ConfigOf(layout, dtype, 0, algorithm);
    const int R = c.world_size();
    const HandleLayout hl = ComputeHandleLayout(c);
    std::vector<Rank> ranks(R);
    for (int s = 0; s < R; ++s) MakeRouting(c, routing, s, tokens[s], &ranks[s]);
    std::vector<kernels::DeviceError> errors;
    Dispatch(c, ranks, /*abandoning=*/-1, &errors);
    std::vector<reference::SourceRank> sources(R);
    for (int s = 0; s < R; ++s) {
      sources[s] = {ranks[s].n,
                    ranks[s].x.data(),
                    ranks[s].ids.data(),
                    ranks[s].weights.data(),
                    ranks[s].counts.data(),
                    nullptr};
    }
    std::vector<std::vector<char>> expected(R, std::vector<char>(hl.exported_bytes, 0));
    for (int d = 0; d < R; ++d) {
      EXPECT_EQ(errors[d].code, kernels::kDeviceErrorNone) << "rank " << d;
      reference::DispatchReceive(c, d, sources,
                                 reference::ReceiveBuffersAt(expected[d].data(), hl));
      std::vector<char> got(hl.exported_bytes);
      ranks[d].region->Download(got.data(), got.size());
      EXPECT_EQ(got, expected[d]) << "receive region of rank " << d;
    }
    Combine(c, ranks, expected);
  }

  // Every rank of `c` (3, all tokens on expert 0) dispatches: each rank's plan writes the same
  // error record (code, the expert or rank that overflows, its rows, the bound) and no rows.
  void ExpectTheSameOverflowOnEveryRank(const GroupConfig& c, int32_t code, int32_t what,
                                        int32_t rows, int32_t bound) {
    std::vector<Rank> ranks(3);
    for (int s = 0; s < 3; ++s) MakeRouting(c, Routing::kHotExpert, s, 8, &ranks[s]);
    std::vector<kernels::DeviceError> errors;
    Dispatch(c, ranks, -1, &errors);
    for (int d = 0; d < 3; ++d) {
      EXPECT_EQ(errors[d].code, code) << "rank " << d;
      EXPECT_EQ(errors[d].a, what);
      EXPECT_EQ(errors[d].b, rows);
      EXPECT_EQ(errors[d].c, bound);
      int32_t go = -1;
      ranks[d].plan->Download(&go, sizeof(go));
      EXPECT_EQ(go, 0);
    }
  }

  // fp8 dispatch (bf16 tokens, H 256): every rank's receive region, e4m3 rows and scales
  // included, equals the reference's. Combine does not depend on the dispatch payload (its
  // kernels read the experts' bf16 outputs), so the token-dtype cases cover it.
  void RunFp8Case(Layout layout, Algorithm algorithm, ScaleFormat format, bool prequantized,
                  Routing routing, std::vector<int> tokens) {
    GroupConfig c = ConfigOf(layout, DType::kBf16, 0, algorithm);
    c.hidden = 256;
    c.dispatch_format = DispatchFormat::kFp8E4m3;
    c.scale_format = format;
    SCOPED_TRACE(c.ToString() + (prequantized ? " pre-quantized" : " quantized by the kernel"));
    const int R = c.world_size(), T = c.max_tokens_per_rank;
    const HandleLayout hl = ComputeHandleLayout(c);
    std::vector<Rank> ranks(R);
    for (int s = 0; s < R; ++s) {
      Rank& r = ranks[s];
      MakeRouting(c, routing, s, tokens[s], &r);
      r.payload = prequantized ? kernels::kPayloadPrequantized : kernels::kPayloadQuantize;
      r.xq.assign(static_cast<size_t>(T) * c.hidden, 0);
      r.x_scales.assign(static_cast<size_t>(T) * c.scale_row_bytes(), 0);
      for (int t = 0; t < r.n && prequantized; ++t) {
        QuantizeRowE4m3(reinterpret_cast<const uint16_t*>(r.x.data()) + t * c.hidden, c.hidden,
                        format, r.xq.data() + t * c.hidden,
                        r.x_scales.data() + t * c.scale_row_bytes());
      }
    }
    std::vector<kernels::DeviceError> errors;
    Dispatch(c, ranks, /*abandoning=*/-1, &errors);
    std::vector<reference::SourceRank> sources(R);
    for (int s = 0; s < R; ++s) {
      const Rank& r = ranks[s];
      sources[s] = {r.n,
                    prequantized ? static_cast<const void*>(r.xq.data()) : r.x.data(),
                    r.ids.data(),
                    r.weights.data(),
                    r.counts.data(),
                    prequantized ? r.x_scales.data() : nullptr};
    }
    for (int d = 0; d < R; ++d) {
      EXPECT_EQ(errors[d].code, kernels::kDeviceErrorNone) << "rank " << d;
      std::vector<char> expected(hl.exported_bytes, 0);
      reference::DispatchReceive(c, d, sources, reference::ReceiveBuffersAt(expected.data(), hl));
      std::vector<char> got(hl.exported_bytes);
      ranks[d].region->Download(got.data(), got.size());
      EXPECT_EQ(got, expected) << "receive region of rank " << d;
    }
  }
};

TEST_F(SpanKernelsTest, ExpertMajorMatchesTheReference) {
  for (DType dtype : {DType::kBf16, DType::kFp32}) {
    RunCase(Layout::kExpertMajor, dtype, Routing::kRandom, {8, 0, 7});
    RunCase(Layout::kExpertMajor, dtype, Routing::kRandom, {1, 8, 8});
    RunCase(Layout::kExpertMajor, dtype, Routing::kAllNone, {8, 8, 3});
    RunCase(Layout::kExpertMajor, dtype, Routing::kHotExpert, {8, 8, 8});
    RunCase(Layout::kExpertMajor, dtype, Routing::kRepeatedExpert, {8, 5, 8});
  }
}

TEST_F(SpanKernelsTest, RankMajorMatchesTheReference) {
  for (DType dtype : {DType::kBf16, DType::kFp32}) {
    RunCase(Layout::kRankMajor, dtype, Routing::kRandom, {8, 0, 7});
    RunCase(Layout::kRankMajor, dtype, Routing::kRandom, {1, 8, 8});
    RunCase(Layout::kRankMajor, dtype, Routing::kAllNone, {8, 8, 3});
    RunCase(Layout::kRankMajor, dtype, Routing::kHotExpert, {8, 8, 8});
    RunCase(Layout::kRankMajor, dtype, Routing::kRepeatedExpert, {8, 5, 8});
  }
}

TEST_F(SpanKernelsTest, Fp8DispatchMatchesTheReference) {
  for (ScaleFormat format : {ScaleFormat::kFp32, ScaleFormat::kUe8m0}) {
    for (bool prequantized : {false, true}) {
      RunFp8Case(Layout::kExpertMajor, Algorithm::kLowLatency, format, prequantized,
                 Routing::kRandom, {8, 0, 7});
      RunFp8Case(Layout::kRankMajor, Algorithm::kLowLatency, format, prequantized, Routing::kRandom,
                 {1, 8, 8});
      RunFp8Case(Layout::kExpertMajor, Algorithm::kHighThroughput, format, prequantized,
                 Routing::kRepeatedExpert, {8, 5, 8});
    }
  }
}

TEST_F(SpanKernelsTest, HighThroughputMatchesTheReference) {
  const Algorithm ht = Algorithm::kHighThroughput;
  for (DType dtype : {DType::kBf16, DType::kFp32}) {
    RunCase(Layout::kExpertMajor, dtype, Routing::kRandom, {8, 0, 7}, ht);
    RunCase(Layout::kExpertMajor, dtype, Routing::kRandom, {1, 8, 8}, ht);
    RunCase(Layout::kExpertMajor, dtype, Routing::kAllNone, {8, 8, 3}, ht);
    RunCase(Layout::kExpertMajor, dtype, Routing::kHotExpert, {8, 8, 8}, ht);
    RunCase(Layout::kExpertMajor, dtype, Routing::kRepeatedExpert, {8, 5, 8}, ht);
  }
}

TEST_F(SpanKernelsTest, HighThroughputRowOverflowIsReportedByEveryRank) {
  // Rank 0 (experts 0 and 1) receives every token of every rank: 24 rows, M = 10; the first
  // rank over M.
  ExpectTheSameOverflowOnEveryRank(
      ConfigOf(Layout::kExpertMajor, DType::kBf16, /*capacity=*/10, Algorithm::kHighThroughput),
      kernels::kDeviceErrorRowCapacity, /*what=*/0, /*rows=*/24, /*bound=*/10);
}

TEST_F(SpanKernelsTest, EveryRankReportsTheSameOverflowAndWritesNoRows) {
  // Expert 0, the first over capacity, has 3 ranks x 8 tokens.
  ExpectTheSameOverflowOnEveryRank(ConfigOf(Layout::kExpertMajor, DType::kBf16, /*capacity=*/4),
                                   kernels::kDeviceErrorCapacity, /*what=*/0, /*rows=*/24,
                                   /*bound=*/4);
}

TEST_F(SpanKernelsTest, AnAbandoningSourceFailsEveryOtherRankNamingIt) {
  const GroupConfig c = ConfigOf(Layout::kRankMajor, DType::kBf16);
  std::vector<Rank> ranks(3);
  for (int s = 0; s < 3; ++s) MakeRouting(c, Routing::kRandom, s, 8, &ranks[s]);
  std::vector<kernels::DeviceError> errors;
  Dispatch(c, ranks, /*abandoning=*/1, &errors);
  for (int d : {0, 2}) {
    EXPECT_EQ(errors[d].code, kernels::kDeviceErrorPeerAbandoned) << "rank " << d;
    EXPECT_EQ(errors[d].b, 1);
  }
}

}  // namespace
}  // namespace epd::gputest
