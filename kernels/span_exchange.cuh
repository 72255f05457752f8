// Kernels of a group that spans daemons (cuda backend, both algorithms; span_dispatch.cu and
// span_combine.cu): they build and read the messages of kernels/span_messages.h around the
// backend's NCCL exchanges, all on the rank's lane stream. The kernels never need the host: a
// high-throughput message's rows are packed, so whatever part of a message the exchange
// carried holds every row its entries name.
//
//   dispatch: LaunchSpanPack (source: one message per destination, in token order)
//             -> NCCL send/recv -> LaunchSpanAssemble (destination: the same receive layout
//             as the single-daemon kernels, low-latency or packed high-throughput, plus the
//             plan kept for combine)
//   combine:  LaunchSpanReturn (destination: each source's selections' expert-output rows)
//             -> NCCL send/recv -> LaunchSpanReduce (source: k-ascending fp32 sum, no FMA)
//
// Errors (a peer's abandon, the group's abort word, capacity) are written into `error` by
// exactly one thread; a null `error` records nothing (an op this rank gave up itself).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/device_error.cuh"
#include "kernels/dispatch.cuh"
#include "kernels/span_messages.h"

namespace epd::kernels {

struct SpanPackParams {
  SpanShape shape;
  // This rank's routing as UpdateHandle bound it (kernels/routing.cuh), and its tokens.
  const int32_t* topk_idx = nullptr;       // [T, K]
  const float* topk_weights = nullptr;     // [T, K]
  const int32_t* local_rank = nullptr;     // [T, K]
  const int32_t* expert_counts = nullptr;  // [E]
  const int32_t* bound_tokens = nullptr;   // [1]
  const int32_t* dest_row = nullptr;       // [T, R] high-throughput only
  const int32_t* dest_counts = nullptr;    // [R] high-throughput only
  const void* x = nullptr;                 // [n, H] token dtype, or e4m3 when prequantized
  int payload = kPayloadCopy;              // DispatchPayload (kernels/dispatch.cuh)
  const void* x_scales = nullptr;          // kPayloadPrequantized: [n, H / 128]
  char* send = nullptr;  // [R] messages; message d at d * dispatch.bytes (not this rank's)
  char* recv = nullptr;  // [R] messages; this rank's own message goes to recv[rank]
  int abandoned = 0;     // this rank gives the op up: headers say so, nothing else is written
};
cudaError_t LaunchSpanPack(const SpanPackParams& params, cudaStream_t stream);

struct SpanAssembleParams {
  SpanShape shape;
  int capacity = 0;            // rows per expert (expert-major) or per rank (high-throughput M)
  const char* recv = nullptr;  // [R] received dispatch messages
  int32_t* plan = nullptr;     // SpanPlanWords(L, R)
  // This rank's receive buffers (HandleLayout: those of its layout; null where unused).
  void* recv_x = nullptr;
  int32_t* recv_src = nullptr;
  float* recv_weights = nullptr;
  int32_t* recv_topk_idx = nullptr;
  float* recv_topk_weights = nullptr;
  int32_t* recv_counts = nullptr;
  int32_t* recv_offsets = nullptr;
  int32_t* recv_rank_counts = nullptr;   // high-throughput
  int32_t* recv_rank_offsets = nullptr;  // high-throughput
  int32_t* expert_rows = nullptr;        // high-throughput, expert_rows_entries of them
  int64_t expert_rows_entries = 0;
  void* recv_scales = nullptr;      // fp8 dispatch
  // Expert-major low-latency: host-mapped room for the R received headers, which the plan
  // kernel copies there for the host to size the combine's returns (null: not copied).
  int32_t* host_headers = nullptr;
  const uint64_t* abort = nullptr;  // host-mapped: ops numbered up to it give up
  uint64_t seq = 0;
  DeviceError* error = nullptr;
};
cudaError_t LaunchSpanAssemble(const SpanAssembleParams& params, cudaStream_t stream);

struct SpanReturnParams {
  SpanShape shape;
  const char* recv = nullptr;        // the dispatch's received messages (their entries)
  const int32_t* plan = nullptr;     // the dispatch's plan
  const void* expert_out = nullptr;  // [recv_rows, H]
  int64_t recv_rows = 0;
  char* send = nullptr;      // [R] return messages (not this rank's)
  char* recv_ret = nullptr;  // [R]; this rank's own return goes to recv_ret[rank]
  int abandoned = 0;
};
cudaError_t LaunchSpanReturn(const SpanReturnParams& params, cudaStream_t stream);

struct SpanReduceParams {
  SpanShape shape;
  int token_type = 0;              // kTokenBf16 / kTokenFp16 / kTokenFp32 (kernels/combine.cuh)
  const char* recv_ret = nullptr;  // [R] received return messages
  const int32_t* topk_idx = nullptr;
  const float* topk_weights = nullptr;
  const int32_t* bound_tokens = nullptr;
  const int32_t* dest_row = nullptr;  // [T, R] high-throughput: t's return row from each rank
  // Expert-major low-latency: this rank's ranking of its selections (routing.cuh), which with
  // its per-expert counts places each selection's row in its return message.
  const int32_t* local_rank = nullptr;     // [T, K]
  const int32_t* expert_counts = nullptr;  // [E]
  void* out = nullptr;                     // [n, H]
  int abandoned = 0;
  const uint64_t* abort = nullptr;
  uint64_t seq = 0;
  DeviceError* error = nullptr;
};
cudaError_t LaunchSpanReduce(const SpanReduceParams& params, cudaStream_t stream);

}  // namespace epd::kernels
