// Dispatch of groups spanning daemons (kernels/span_exchange.cuh): the source's pack kernel and
// the destination's plan and row kernels around the NCCL exchange.
#include "kernels/internal/fp8_quant.cuh"
#include "kernels/internal/preload.cuh"
#include "kernels/internal/span_common.cuh"
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
using detail::ZeroRow;

// Scale rows: H / 128 fp32 or ue8m0 scales, not always whole 16-byte vectors.
__device__ __forceinline__ void CopyScales(char* dst, const char* src, int64_t bytes) {
  for (int64_t i = threadIdx.x; i < bytes; i += blockDim.x) dst[i] = src[i];
}
__device__ __forceinline__ void ZeroScales(char* dst, int64_t bytes) {
  for (int64_t i = threadIdx.x; i < bytes; i += blockDim.x) dst[i] = 0;
}

// ---- dispatch, source side ----
// Token t's payload into message row `slot`: its bytes in the token dtype, a copy of the
// frontend's e4m3 row and scales, or quantized here (a half warp per 128-channel block, the
// rule of kernels/internal/fp8_quant.cuh). Whole block: the quantizing loop runs the same
// number of times on every thread, as each block's amax shuffles need every lane of its warp.
__device__ void PackRow(const SpanPackParams& p, char* message, int slot, int t) {
  const SpanDispatchMessage& m = p.shape.dispatch;
  char* row = message + m.rows_offset + static_cast<int64_t>(slot) * m.row_bytes;
  char* scales = message + m.scales_offset + static_cast<int64_t>(slot) * m.scale_row_bytes;
  const char* x = static_cast<const char*>(p.x);
  if (p.payload != kPayloadQuantize) {  // the token dtype's row, or the frontend's e4m3 one
    CopyRow(row, x + t * m.row_bytes, m.row_bytes);
    if (p.payload == kPayloadPrequantized) {
      CopyScales(scales, static_cast<const char*>(p.x_scales) + t * m.scale_row_bytes,
                 m.scale_row_bytes);
    }
    return;
  }
  const int hidden = static_cast<int>(m.row_bytes);  // e4m3: a byte per channel
  const int blocks = hidden / detail::kFp8BlockChannels;
  const int scale_bytes = p.shape.ue8m0_scales ? 1 : 4;
  const auto* src = static_cast<const uint16_t*>(p.x) + static_cast<int64_t>(t) * hidden;
  const int half_warp = static_cast<int>(threadIdx.x) / 16, lane16 = threadIdx.x % 16;
  for (int base = 0; base < blocks; base += kSpanThreads / 16) {
    const int b = base + half_warp;
    detail::QuantizeBlockHalfWarp(src + b * detail::kFp8BlockChannels,
                                  reinterpret_cast<uint8_t*>(row) + b * detail::kFp8BlockChannels,
                                  scales + b * scale_bytes, p.shape.ue8m0_scales != 0, b < blocks,
                                  lane16);
  }
}

__global__ void __launch_bounds__(kSpanThreads) SpanPackKernel(SpanPackParams p) {
  const SpanShape& s = p.shape;
  const int t = blockIdx.x, d = blockIdx.y, K = s.top_k, L = s.local_experts;
  const int n = p.abandoned ? 0 : *p.bound_tokens;
  char* message = (d == s.rank ? p.recv : p.send) + d * s.dispatch.bytes;
  if (t == 0) {
    auto* header = reinterpret_cast<int32_t*>(message);
    if (threadIdx.x == 0) {
      header[0] = p.abandoned ? kSpanMessageAbandoned : kSpanMessageOk;
      header[1] = n;
    }
    for (int e = threadIdx.x; e < s.experts; e += blockDim.x) {
      header[kSpanHeaderFixedWords + e] = p.abandoned ? 0 : p.expert_counts[e];
    }
    for (int r = threadIdx.x; r < s.world_size; r += blockDim.x) {
      header[kSpanHeaderFixedWords + s.experts + r] =
          p.abandoned || !s.high_throughput ? 0 : p.dest_counts[r];
    }
  }
  if (p.abandoned) return;
  bool present = false;
  if (t < n) {
    for (int k = 0; k < K; ++k) {
      const int id = p.topk_idx[t * K + k];
      present = present || (id >= 0 && id / L == d);
    }
  }
  auto* entry =
      reinterpret_cast<int32_t*>(message + s.dispatch.entries_offset) + t * s.dispatch.entry_words;
  // High-throughput rows are packed (the message ends after them: span_messages.h).
  const int slot = !present ? -1 : s.high_throughput ? p.dest_row[t * s.world_size + d] : t;
  if (threadIdx.x == 0) entry[0] = slot;
  if (threadIdx.x < K) {
    const int k = threadIdx.x;
    const int id = t < n ? p.topk_idx[t * K + k] : -1;
    const bool here = id >= 0 && id / L == d;
    entry[1 + k] = here ? id : -1;
    entry[1 + K + k] = here ? p.local_rank[t * K + k] : -1;
    entry[1 + 2 * K + k] = here ? __float_as_int(p.topk_weights[t * K + k]) : 0;
  }
  if (present) PackRow(p, message, slot, t);
}

// ---- dispatch, destination side: one block decides whether rows are written and where ----
constexpr int kPlanThreads = 256;

__device__ __forceinline__ int HeaderWord(const SpanAssembleParams& p, int src, int word) {
  return HeaderOf(p.recv, p.shape.dispatch.bytes, src)[word];
}
// Header words of expert e's selections and of the rows to rank r (kernels/span_messages.h).
__device__ __forceinline__ int ExpertWord(int e) { return kSpanHeaderFixedWords + e; }
__device__ __forceinline__ int RowsWord(const SpanShape& s, int r) {
  return kSpanHeaderFixedWords + s.experts + r;
}

// The first expert (expert-major) or destination rank (high-throughput) whose receivers
// overflow, by every source's header; E or R when none does. Whole block.
__device__ int FirstOverflow(const SpanAssembleParams& p) {
  const SpanShape& s = p.shape;
  const int R = s.world_size;
  __shared__ int first;
  const int none = s.high_throughput ? R : s.experts;
  if (threadIdx.x == 0) first = none;
  __syncthreads();
  if (!s.rank_major) {
    for (int i = threadIdx.x; i < none; i += blockDim.x) {
      const int word = s.high_throughput ? RowsWord(s, i) : ExpertWord(i);
      int64_t total = 0;
      for (int src = 0; src < R; ++src) total += HeaderWord(p, src, word);
      if (total > p.capacity) atomicMin(&first, i);
    }
  }
  __syncthreads();
  return first;
}

__global__ void __launch_bounds__(kPlanThreads) SpanPlanKernel(SpanAssembleParams p) {
  const SpanShape& s = p.shape;
  const int R = s.world_size, L = s.local_experts;
  __shared__ int first_abandoned;
  if (threadIdx.x == 0) first_abandoned = R;
  // NOTE: written here rather than by a copy op after the exchange: an extra op on the stream
  // cost a dispatch a context switch where contexts time-slice the GPU (measured).
  if (p.host_headers != nullptr) {
    const int words = static_cast<int>(SpanHeaderWords(s.experts, R));
    for (int i = threadIdx.x; i < R * words; i += blockDim.x) {
      p.host_headers[i] = HeaderWord(p, i / words, i % words);
    }
  }
  __syncthreads();
  for (int src = threadIdx.x; src < R; src += blockDim.x) {
    if (HeaderWord(p, src, 0) == kSpanMessageAbandoned) atomicMin(&first_abandoned, src);
  }
  const int first_full = FirstOverflow(p);  // synchronises the block
  if (!s.rank_major && !s.high_throughput) {
    // Expert-major low-latency: where each local expert's rows start in the return message to
    // each source (kernels/span_messages.h), from that source's counts.
    for (int src = threadIdx.x; src < R; src += blockDim.x) {
      int base = 0;
      for (int l = 0; l < L; ++l) {
        p.plan[SpanPlanReturnBaseWord(L, R, src, l)] = base;
        base += HeaderWord(p, src, ExpertWord(s.rank * L + l));
      }
    }
  }
  if (threadIdx.x != 0) return;
  const int none = s.high_throughput ? R : s.experts;
  int go = 0;
  if (Aborted(p.abort, p.seq)) {
    WriteError(p.error, kDeviceErrorAborted, 0, 0, 0, static_cast<int64_t>(p.seq));
  } else if (first_abandoned < R) {
    WriteError(p.error, kDeviceErrorPeerAbandoned, kSyncPhaseCounts, first_abandoned, 0,
               static_cast<int64_t>(p.seq));
  } else if (first_full < none) {
    const int word = s.high_throughput ? RowsWord(s, first_full) : ExpertWord(first_full);
    int64_t total = 0;
    for (int src = 0; src < R; ++src) total += HeaderWord(p, src, word);
    // The single daemon's records: (expert, selections, C) or (rank, rows, M).
    WriteError(p.error, s.high_throughput ? kDeviceErrorRowCapacity : kDeviceErrorCapacity,
               first_full, static_cast<int32_t>(total), p.capacity, 0);
  } else {
    go = 1;
  }
  p.plan[0] = go;
  if (!go) return;
  if (s.rank_major) {
    for (int src = 0; src < R; ++src) p.recv_counts[src] = HeaderWord(p, src, 1);
    return;
  }
  if (s.high_throughput) {  // packed rows: every source's after those of the sources before it
    int row = 0;
    for (int src = 0; src < R; ++src) {
      const int rows = HeaderWord(p, src, RowsWord(s, s.rank));
      p.plan[SpanPlanFirstRowWord(L, R, src)] = row;
      p.recv_rank_offsets[src] = row;
      p.recv_rank_counts[src] = rows;
      row += rows;
    }
  }
  // Expert-major rows, or high-throughput gather-list entries, of local expert l: by source,
  // then by the source's own ranking of them.
  int cursor = 0;
  for (int l = 0; l < L; ++l) {
    const int e = s.rank * L + l;
    p.plan[1 + l] = cursor;
    int base = 0;
    for (int src = 0; src < R; ++src) {
      p.plan[1 + L + l * R + src] = base;
      base += HeaderWord(p, src, ExpertWord(e));
    }
    p.recv_offsets[l] = cursor;
    p.recv_counts[l] = base;
    cursor += base;
  }
  if (s.high_throughput) p.recv_offsets[L] = cursor;
}

__global__ void __launch_bounds__(kSpanThreads) SpanRowsKernel(SpanAssembleParams p) {
  const SpanShape& s = p.shape;
  if (p.plan[0] == 0) return;
  const int t = blockIdx.x, src = blockIdx.y, K = s.top_k, L = s.local_experts, R = s.world_size,
            T = s.max_tokens;
  const char* message = p.recv + src * s.dispatch.bytes;
  const int32_t* entry = EntryOf(message, s.dispatch, t);
  const bool present = entry[0] >= 0;
  const SpanDispatchMessage& m = s.dispatch;
  // Message row entry[0]: t (low-latency) or the token's packed index (high-throughput).
  const int64_t slot = present ? entry[0] : t;
  if (slot >= T) return;  // only a corrupt message gets here
  const char* row = message + m.rows_offset + slot * m.row_bytes;
  const char* row_scales = message + m.scales_offset + slot * m.scale_row_bytes;
  // The row's bytes (and fp8 scales) as received row `out_row`.
  auto place = [&](int64_t out_row) {
    CopyRow(static_cast<char*>(p.recv_x) + out_row * m.row_bytes, row, m.row_bytes);
    if (m.scale_row_bytes > 0) {
      CopyScales(static_cast<char*>(p.recv_scales) + out_row * m.scale_row_bytes, row_scales,
                 m.scale_row_bytes);
    }
  };
  if (s.high_throughput) {
    if (!present) return;
    const int64_t out_row =
        static_cast<int64_t>(p.plan[SpanPlanFirstRowWord(L, R, src)]) + entry[0];
    if (out_row >= p.capacity) return;  // only a corrupt message gets here
    if (threadIdx.x == 0) {
      p.recv_src[out_row * 2 + 0] = src;
      p.recv_src[out_row * 2 + 1] = t;
    }
    if (threadIdx.x < K) {
      const int k = threadIdx.x;
      const int id = entry[1 + k];  // masked to this rank by the source
      const int l = id - s.rank * L;
      p.recv_topk_idx[out_row * K + k] = id >= 0 ? l : -1;
      p.recv_topk_weights[out_row * K + k] = id >= 0 ? __int_as_float(entry[1 + 2 * K + k]) : 0.0f;
      // -1: a repeat of the expert in this token, listed once.
      const int rank_in_expert = id >= 0 ? entry[1 + K + k] : -1;
      if (rank_in_expert >= 0) {
        const int64_t at = ExpertRow(p.plan, L, R, l, src, rank_in_expert);
        if (at < p.expert_rows_entries) p.expert_rows[at] = static_cast<int32_t>(out_row);
      }
    }
    place(out_row);
    return;
  }
  if (s.rank_major) {
    const int64_t out_row = static_cast<int64_t>(src) * T + t;
    if (threadIdx.x < K) {
      p.recv_topk_idx[out_row * K + threadIdx.x] = present ? entry[1 + threadIdx.x] : -1;
      p.recv_topk_weights[out_row * K + threadIdx.x] =
          present ? __int_as_float(entry[1 + 2 * K + threadIdx.x]) : 0.0f;
    }
    if (present) {
      place(out_row);
    } else {  // absent: zero bytes in recv_x and recv_scales
      ZeroRow(static_cast<char*>(p.recv_x) + out_row * m.row_bytes, m.row_bytes);
      if (m.scale_row_bytes > 0) {
        ZeroScales(static_cast<char*>(p.recv_scales) + out_row * m.scale_row_bytes,
                   m.scale_row_bytes);
      }
    }
    return;
  }
  if (!present) return;
  const int64_t rows = static_cast<int64_t>(L) * p.capacity;
  for (int k = 0; k < K; ++k) {
    const int id = entry[1 + k];
    if (id < 0) continue;
    const int64_t out_row = ExpertRow(p.plan, L, R, id - s.rank * L, src, entry[1 + K + k]);
    if (out_row < 0 || out_row >= rows) continue;  // only a corrupt message gets here
    if (threadIdx.x == 0) {
      p.recv_src[out_row * 3 + 0] = src;
      p.recv_src[out_row * 3 + 1] = t;
      p.recv_src[out_row * 3 + 2] = k;
      p.recv_weights[out_row] = __int_as_float(entry[1 + 2 * K + k]);
    }
    place(out_row);
  }
}

}  // namespace

cudaError_t LaunchSpanPack(const SpanPackParams& p, cudaStream_t stream) {
  SpanPackKernel<<<detail::TokenPeerGrid(p.shape), kSpanThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t LaunchSpanAssemble(const SpanAssembleParams& p, cudaStream_t stream) {
  SpanPlanKernel<<<1, kPlanThreads, 0, stream>>>(p);
  if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  SpanRowsKernel<<<detail::TokenPeerGrid(p.shape), kSpanThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

namespace detail {

cudaError_t PreloadSpanDispatchKernels() {
  for (const void* kernel : {reinterpret_cast<const void*>(&SpanPackKernel),
                             reinterpret_cast<const void*>(&SpanPlanKernel),
                             reinterpret_cast<const void*>(&SpanRowsKernel)}) {
    if (const cudaError_t e = LoadKernel(kernel); e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

}  // namespace detail
}  // namespace epd::kernels
