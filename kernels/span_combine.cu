// Combine of groups spanning daemons (kernels/span_exchange.cuh): the destination's return
// kernel and the source's reduce kernel around the NCCL exchange.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/combine.cuh"
#include "kernels/internal/preload.cuh"
#include "kernels/internal/span_common.cuh"
#include "kernels/internal/token_vector.cuh"
#include "kernels/span_exchange.cuh"

namespace epd::kernels {
namespace {

using detail::Aborted;
using detail::CopyRow;
using detail::EntryOf;
using detail::ExpertRow;
using detail::HeaderOf;
using detail::kSpanThreads;
using detail::WriteError;

// ---- combine, destination side ----
__global__ void __launch_bounds__(kSpanThreads) SpanReturnKernel(SpanReturnParams p) {
  const SpanShape& s = p.shape;
  const int t = blockIdx.x, src = blockIdx.y, K = s.top_k, L = s.local_experts, R = s.world_size,
            T = s.max_tokens;
  char* message = (src == s.rank ? p.recv_ret : p.send) + src * s.ret.bytes;
  // A dispatch that wrote no rows here has no outputs to return: the sources fail the op.
  const bool giving_up = p.abandoned || p.plan[0] == 0;
  if (t == 0 && threadIdx.x == 0) {
    *reinterpret_cast<int32_t*>(message) = giving_up ? kSpanMessageAbandoned : kSpanMessageOk;
  }
  if (giving_up) return;
  const int32_t* entry = EntryOf(p.recv + src * s.dispatch.bytes, s.dispatch, t);
  if (entry[0] < 0) return;
  const char* expert_out = static_cast<const char*>(p.expert_out);
  char* rows = message + s.ret.rows_offset;
  if (s.rank_major || s.high_throughput) {  // the frontend's pre-reduced row of (src, t)
    // High-throughput: return row i is packed row first_row[src] + i, so the message carries
    // as many rows as the dispatch's did.
    const int64_t slot = s.high_throughput ? entry[0] : t;
    if (slot >= T) return;  // only a corrupt message gets here
    const int64_t row = s.high_throughput
                            ? static_cast<int64_t>(p.plan[SpanPlanFirstRowWord(L, R, src)]) + slot
                            : static_cast<int64_t>(src) * T + t;
    if (row < p.recv_rows)
      CopyRow(rows + slot * s.ret.row_bytes, expert_out + row * s.ret.row_bytes, s.ret.row_bytes);
    return;
  }
  // Each selection's expert output, packed by local expert and the source's ranking.
  const int64_t capacity = static_cast<int64_t>(T) * s.ret.rows_per_token;
  for (int k = 0; k < K; ++k) {
    const int id = entry[1 + k];
    if (id < 0) continue;
    const int l = id - s.rank * L, rank_in_expert = entry[1 + K + k];
    const int64_t row = ExpertRow(p.plan, L, R, l, src, rank_in_expert);
    const int64_t slot =
        static_cast<int64_t>(p.plan[SpanPlanReturnBaseWord(L, R, src, l)]) + rank_in_expert;
    // Out of range only with a corrupt message.
    if (row >= 0 && row < p.recv_rows && slot >= 0 && slot < capacity) {
      CopyRow(rows + slot * s.ret.row_bytes, expert_out + row * s.ret.row_bytes, s.ret.row_bytes);
    }
  }
}

// ---- combine, source side ----
template <int kType>
__global__ void __launch_bounds__(kSpanThreads) SpanReduceKernel(SpanReduceParams p) {
  using V = detail::Vec<kType>;
  const SpanShape& s = p.shape;
  const int t = blockIdx.x, K = s.top_k, L = s.local_experts, R = s.world_size;
  __shared__ int bad_peer;
  __shared__ int aborted;
  // Per selection k: the row it reads (null: contributes nothing) and its weight.
  __shared__ const char* rows[32];
  __shared__ float weights[32];
  if (threadIdx.x == 0) {
    bad_peer = R;
    aborted = Aborted(p.abort, p.seq) ? 1 : 0;
  }
  __syncthreads();
  for (int src = threadIdx.x; src < R; src += blockDim.x) {
    if (HeaderOf(p.recv_ret, s.ret.bytes, src)[0] == kSpanMessageAbandoned && src != s.rank) {
      atomicMin(&bad_peer, src);
    }
  }
  __syncthreads();
  if (p.abandoned) return;
  if (aborted || bad_peer < R) {
    if (t == 0 && threadIdx.x == 0) {
      if (aborted) {
        WriteError(p.error, kDeviceErrorAborted, 0, 0, 0, static_cast<int64_t>(p.seq));
      } else {
        WriteError(p.error, kDeviceErrorPeerAbandoned, kSyncPhaseStart, bad_peer, 0,
                   static_cast<int64_t>(p.seq));
      }
    }
    return;
  }
  if (t >= *p.bound_tokens) return;
  if (threadIdx.x < K) {
    const int k = threadIdx.x;
    const int id = p.topk_idx[t * K + k];
    const char* row = nullptr;
    float w = 0.0f;
    if (id >= 0) {
      const int d = id / L;
      // Rank-major and high-throughput: the destination's pre-reduced row counts once, at its
      // first k, weight 1.
      const bool pre_reduced = s.rank_major || s.high_throughput;
      bool first = true;
      for (int k2 = 0; k2 < k && pre_reduced; ++k2) {
        const int other = p.topk_idx[t * K + k2];
        first = first && !(other >= 0 && other / L == d);
      }
      if (first) {
        int64_t slot = 0;
        if (s.high_throughput) {
          slot = p.dest_row[t * R + d];
        } else if (s.rank_major) {
          slot = t;
        } else {  // after this rank's selections of d's experts before this one
          slot = p.local_rank[t * K + k];
          for (int e = d * L; e < id; ++e) slot += p.expert_counts[e];
        }
        row = p.recv_ret + d * s.ret.bytes + s.ret.rows_offset + slot * s.ret.row_bytes;
        w = pre_reduced ? 1.0f : p.topk_weights[t * K + k];
      }
    }
    rows[k] = row;
    weights[k] = w;
  }
  __syncthreads();
  const int64_t vectors = s.ret.row_bytes / 16;
  auto* out = reinterpret_cast<int4*>(static_cast<char*>(p.out) + t * s.ret.row_bytes);
  for (int64_t v = threadIdx.x; v < vectors; v += blockDim.x) {
    float acc[V::kElems];
#pragma unroll
    for (int i = 0; i < V::kElems; ++i) acc[i] = 0.0f;
    for (int k = 0; k < K; ++k) {
      if (rows[k] == nullptr) continue;
      const int4 z = reinterpret_cast<const int4*>(rows[k])[v];
      const float w = weights[k];
#pragma unroll
      for (int i = 0; i < V::kElems; ++i) {
        acc[i] = __fadd_rn(acc[i], __fmul_rn(w, V::Get(z, i)));  // never a fused multiply-add
      }
    }
    int4 packed;
#pragma unroll
    for (int i = 0; i < V::kElems; ++i) V::Set(packed, i, acc[i]);
    out[v] = packed;
  }
}

}  // namespace

cudaError_t LaunchSpanReturn(const SpanReturnParams& p, cudaStream_t stream) {
  SpanReturnKernel<<<detail::TokenPeerGrid(p.shape), kSpanThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t LaunchSpanReduce(const SpanReduceParams& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(p.shape.max_tokens));
  switch (p.token_type) {
    case kTokenBf16:
      SpanReduceKernel<kTokenBf16><<<grid, kSpanThreads, 0, stream>>>(p);
      break;
    case kTokenFp16:
      SpanReduceKernel<kTokenFp16><<<grid, kSpanThreads, 0, stream>>>(p);
      break;
    default:
      SpanReduceKernel<kTokenFp32><<<grid, kSpanThreads, 0, stream>>>(p);
      break;
  }
  return cudaGetLastError();
}

namespace detail {

cudaError_t PreloadSpanCombineKernels() {
  for (const void* kernel : {reinterpret_cast<const void*>(&SpanReturnKernel),
                             reinterpret_cast<const void*>(&SpanReduceKernel<kTokenBf16>),
                             reinterpret_cast<const void*>(&SpanReduceKernel<kTokenFp16>),
                             reinterpret_cast<const void*>(&SpanReduceKernel<kTokenFp32>)}) {
    if (const cudaError_t e = LoadKernel(kernel); e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

}  // namespace detail
}  // namespace epd::kernels
