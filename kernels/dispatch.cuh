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

#include "kernels/device_error.cuh"
#include "kernels/sync_area.cuh"

namespace epd::kernels {

// What each dispatched row carries (the row payload).
enum DispatchPayload : int {
  kPayloadCopy = 0,          // row_bytes of x as they are (the token dtype)
  kPayloadQuantize = 1,      // bf16 x quantized here to e4m3 + a scale per 128 channels
  kPayloadPrequantized = 2,  // e4m3 x and its x_scales, copied
};

struct DispatchParams {
  int world_size = 0;
  int rank = 0;  // group rank of this source
  int experts = 0;
  int local_experts = 0;
  int top_k = 0;
  int max_tokens = 0;
  int capacity = 0;
  int rank_major = 0;
  int64_t row_bytes = 0;    // multiple of 16 (kPayloadCopy)
  const void* x = nullptr;  // [n, H]
  int payload = kPayloadCopy;
  int hidden = 0;                  // fp8 payloads: H, a multiple of 128
  int ue8m0_scales = 0;            // fp8 payloads: scales are ue8m0 bytes, else fp32
  const void* x_scales = nullptr;  // kPayloadPrequantized: [n, H / 128]
  const int32_t* topk_idx = nullptr;
  const float* topk_weights = nullptr;
  const int32_t* expert_counts = nullptr;
  const int32_t* local_rank = nullptr;
  const int32_t* bound_tokens = nullptr;
  int32_t* slot = nullptr;         // expert-major: written here for combine
  int32_t* recv_counts = nullptr;  // this rank's own exported counts / offsets
  int32_t* recv_offsets = nullptr;
  SyncAreas sync{};                  // every rank's SyncArea
  const PeerTable* peers = nullptr;  // this rank's, in device memory
  int handle_slot = 0;               // where this rank's own receive buffers are published
  const uint64_t* abort = nullptr;   // the group's host-mapped abort word
  // The op's sequence number; 0: device-numbered (graph-replayable), one above the larger
  // of the last collective this rank ran (its SyncArea's control.seq) and seq_floor.
  uint64_t seq = 0;
  uint64_t seq_floor = 0;
  uint64_t timeout_ns = 0;
  DeviceError* error = nullptr;
  DeviceFenceSignal signal;  // the op's fence signal (sync_area.cuh)
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
