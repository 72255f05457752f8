// Low-latency intra-node dispatch: every source rank writes its token rows straight into the
// destination ranks' receive buffers over NVLink (peer pointers), in the deterministic order
// of docs/design.md §3, with no host synchronisation.
//
// Protocol (one kernel per rank, all ranks run it concurrently with the same seq):
//  1. the leader block publishes this rank's per-expert counts (and n) to every peer's inbox,
//     waits for every peer's counts, computes the packed base row of each expert it sends to
//     (expert-major) and this rank's own recv_counts / recv_offsets, checks capacity;
//  2. all blocks copy rows (warp per row, 16-byte vectors) and write the row metadata and the
//     combine slots;
//  3. the last block publishes "done" to every destination and waits for every source's
//     "done": when the kernel ends, this rank's receive buffers are complete.
// Every wait is bounded by timeout_ns and released by the host's abort word or a peer that gave
// up the op; a failed wait writes a DeviceError, tells the peers (abandoned) and ends the kernel.
// Peers' buffers come from the rank's PeerTable: each destination publishes, with its counts,
// the handle slot its receive buffers of this op are in.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/collective_launch.cuh"

namespace epd::kernels {

// What each dispatched row carries (the row payload).
enum DispatchPayload : int {
  kPayloadCopy = 0,          // row_bytes of x as they are (the token dtype)
  kPayloadQuantize = 1,      // bf16 x quantized here to e4m3 + a scale per 128 channels
  kPayloadPrequantized = 2,  // e4m3 x and its x_scales, copied
};

// What both dispatch kernels (this low-latency one and the high-throughput one,
// ht_dispatch.cuh) read of the group, the row payload and the routing UpdateHandle bound.
struct DispatchInputs : CollectiveLaunch {
  int experts = 0;
  int local_experts = 0;
  int top_k = 0;
  int max_tokens = 0;
  int64_t row_bytes = 0;    // of a received row, a multiple of 16 (kPayloadCopy: x's rows)
  const void* x = nullptr;  // [n, H]
  int payload = kPayloadCopy;
  int hidden = 0;                  // fp8 payloads: H, a multiple of 128
  int ue8m0_scales = 0;            // fp8 payloads: scales are ue8m0 bytes, else fp32
  const void* x_scales = nullptr;  // kPayloadPrequantized: [n, H / 128]
  const int32_t* topk_idx = nullptr;
  const float* topk_weights = nullptr;
  // [E] this rank's selections of each expert (high-throughput: its tokens, once per token)
  const int32_t* expert_counts = nullptr;
  // [T, K] each selection's index among this rank's selections of its expert (high-throughput:
  // among its tokens of the expert)
  const int32_t* local_rank = nullptr;
  const int32_t* bound_tokens = nullptr;  // n, written by the routing bind on this stream
  int32_t* slot = nullptr;                // [T, K] combine rows, written here
};

struct DispatchParams : DispatchInputs {
  int capacity = 0;
  int rank_major = 0;
  int32_t* recv_counts = nullptr;  // this rank's own exported counts / offsets
  int32_t* recv_offsets = nullptr;
};

// A warp copies rows in parts of this many 16-byte vectors, so a few long rows still spread
// over every SM; the host sizes grids with it.
constexpr int kDispatchVectorsPerPart = 256;
// fp8 payloads split a row into parts of this many 128-channel blocks (2048 channels).
constexpr int kDispatchBlocksPerPart = 16;

// Parts per row, the unit of work of one warp (the host sizes grids with it).
inline __host__ __device__ int DispatchRowParts(const DispatchParams& p) {
  if (p.payload == kPayloadCopy) {
    const int vectors = static_cast<int>(p.row_bytes / 16);
    return (vectors + kDispatchVectorsPerPart - 1) / kDispatchVectorsPerPart;
  }
  const int blocks = p.hidden / 128;
  return (blocks + kDispatchBlocksPerPart - 1) / kDispatchBlocksPerPart;
}

// kPayloadQuantize quantizes each token once and stores it to every row it goes to: its unit
// of work is a step of kDispatchBlocksPerStep 128-channel blocks of one token (eight lanes per
// block, so each lane stores its 16 codes as one vector). Params: this header's or the
// high-throughput dispatch's (its hidden).
constexpr int kDispatchBlocksPerStep = 4;
template <typename Params>
inline __host__ __device__ int DispatchQuantizeSteps(const Params& p) {
  return (p.hidden / 128 + kDispatchBlocksPerStep - 1) / kDispatchBlocksPerStep;
}

// blocks: any number >= 1 (the kernel strides); 512 threads each.
cudaError_t LaunchDispatch(const DispatchParams& params, int blocks, cudaStream_t stream);

}  // namespace epd::kernels
