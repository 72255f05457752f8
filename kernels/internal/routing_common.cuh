// Device-only helpers of the routing bind shared by its single-block kernel (routing.cu) and
// its chunked kernels (routing_chunked.cu), so both read ids, rank repeats and report errors
// by one rule.
#pragma once

#include <climits>
#include <cstdint>

#include "kernels/routing.cuh"

namespace epd::kernels::detail {

__device__ __forceinline__ int64_t LoadId(const RoutingParams& p, int i) {
  return p.idx_is_int64 ? static_cast<const int64_t*>(p.topk_idx)[i]
                        : static_cast<const int32_t*>(p.topk_idx)[i];
}

// NOTE: the bind reads the frontend's topk_idx and topk_weights once, into its own topk_out
// and weights_out, and every later pass reads those: a frontend writing its routing while the
// bind runs (its bug) then cannot make two passes disagree (ranks counted against other
// counts: rows past an expert's region) nor index past the experts. An id outside [-1, E)
// is kept as -1 (the bind is rejected anyway).
__device__ __forceinline__ void TakeSelection(const RoutingParams& p, int i, int64_t id) {
  p.topk_out[i] = id >= -1 && id < p.experts ? static_cast<int>(id) : -1;
  p.weights_out[i] = p.topk_weights != nullptr ? p.topk_weights[i] : 1.0f;
}

// High-throughput counts a token once per expert: selection i is its token's first k with
// that expert id (in the bind's own copy; the token's earlier selections are written).
__device__ __forceinline__ bool FirstOfExpertInToken(const RoutingParams& p, int i, int e) {
  const int k = i % p.top_k;
  for (int j = 1; j <= k; ++j) {
    if (p.topk_out[i - j] == e) return false;
  }
  return true;
}

// Bitmask of the group ranks token t's experts live on, from the bind's copy once it is
// written (ids outside [0, E) were kept as -1 and count nowhere).
__device__ __forceinline__ unsigned DestinationMask(const RoutingParams& p, int t) {
  unsigned mask = 0;
  for (int k = 0; k < p.top_k; ++k) {
    const int e = p.topk_out[t * p.top_k + k];
    if (e >= 0) mask |= 1u << (e / p.local_experts);
  }
  return mask;
}

// Rank-major slots of token t: each destination rank appears once per token, at its first k
// (reference ComputeSlots); the token's other selections of that rank get -1.
__device__ __forceinline__ void WriteRankMajorSlots(const RoutingParams& p, int t) {
  const int K = p.top_k, L = p.local_experts;
  for (int k = 0; k < K; ++k) {
    const int e = p.topk_out[t * K + k];
    bool first = e >= 0;
    for (int j = 0; j < k && first; ++j) {
      const int ej = p.topk_out[t * K + j];
      if (ej >= 0 && ej / L == e / L) first = false;
    }
    p.slot[t * K + k] = first ? p.group_rank * p.max_tokens + t : -1;
  }
}

// Rejects the whole update, run by every thread of ONE block: binds no tokens, so nothing
// stale is dispatched, and thread 0 writes the record. first_bad / first_bad_weight are the
// first bad (t, k) indices (INT_MAX: none); a bad weight is reported first, as the cpu
// backend does (routing_errors.h).
__device__ __forceinline__ void RejectRouting(const RoutingParams& p, int first_bad,
                                              int first_bad_weight) {
  for (int e = threadIdx.x; e < p.experts; e += blockDim.x) p.expert_counts[e] = 0;
  if (p.high_throughput) {
    for (int d = threadIdx.x; d < p.world_size; d += blockDim.x) p.dest_counts[d] = 0;
  }
  if (threadIdx.x == 0) {
    *p.bound_tokens = 0;
    const int K = p.top_k;
    const bool weight = first_bad_weight != INT_MAX;
    const int at = weight ? first_bad_weight : first_bad;
    p.error->a = at / K;
    p.error->b = at % K;
    p.error->c = weight ? 0 : p.experts;
    p.error->value =
        weight ? static_cast<int64_t>(__float_as_uint(p.topk_weights[at])) : LoadId(p, at);
    p.error->value2 = 0;
    p.error->code = weight ? kDeviceErrorBadWeight : kDeviceErrorBadExpertId;
  }
}

}  // namespace epd::kernels::detail
