// Device helpers shared by the kernels of groups spanning daemons (span_dispatch.cu,
// span_combine.cu): the block size, row copies, message headers and entries, error records.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/span_exchange.cuh"

namespace epd::kernels::detail {

// Copy kernels: a block per (token, peer) row, 16-byte vectors (rows are whole vectors:
// common/limits.h kHiddenMultiple).
constexpr int kSpanThreads = 128;
static_assert(kSpanThreads >= 32, "a block's first threads write the K-wide entry words");

__device__ __forceinline__ void CopyRow(char* dst, const char* src, int64_t row_bytes) {
  const int64_t vectors = row_bytes / 16;
  for (int64_t v = threadIdx.x; v < vectors; v += blockDim.x) {
    reinterpret_cast<int4*>(dst)[v] = reinterpret_cast<const int4*>(src)[v];
  }
}

__device__ __forceinline__ void ZeroRow(char* dst, int64_t row_bytes) {
  const int64_t vectors = row_bytes / 16;
  for (int64_t v = threadIdx.x; v < vectors; v += blockDim.x) {
    reinterpret_cast<int4*>(dst)[v] = make_int4(0, 0, 0, 0);
  }
}

__device__ __forceinline__ void WriteError(DeviceError* error, int32_t code, int32_t a, int32_t b,
                                           int32_t c, int64_t value) {
  if (error == nullptr) return;
  error->a = a;
  error->b = b;
  error->c = c;
  error->value = value;
  error->value2 = 0;
  __threadfence_system();
  error->code = code;
}

__device__ __forceinline__ bool Aborted(const uint64_t* abort, uint64_t seq) {
  return abort != nullptr && *reinterpret_cast<const volatile uint64_t*>(abort) >= seq;
}

__device__ __forceinline__ const int32_t* HeaderOf(const char* messages, int64_t bytes, int s) {
  return reinterpret_cast<const int32_t*>(messages + s * bytes);
}

__device__ __forceinline__ const int32_t* EntryOf(const char* message, const SpanDispatchMessage& m,
                                                  int t) {
  return reinterpret_cast<const int32_t*>(message + m.entries_offset) + t * m.entry_words;
}

// Row of expert-major selection (src, local expert l, local rank) in this rank's recv_x.
__device__ __forceinline__ int64_t ExpertRow(const int32_t* plan, int L, int R, int l, int src,
                                             int local_rank) {
  return static_cast<int64_t>(plan[1 + l]) + plan[1 + L + l * R + src] + local_rank;
}

// A block per (token, peer).
inline dim3 TokenPeerGrid(const SpanShape& s) {
  return dim3(static_cast<unsigned>(s.max_tokens), static_cast<unsigned>(s.world_size));
}

}  // namespace epd::kernels::detail
