// High-throughput intra-node dispatch (docs/design.md §3, "High-throughput"): each token
// crosses to a destination rank once, into rows packed by (source rank, source token), with
// a per-local-expert gather list written by the sources at deterministic positions.
//
// Protocol (one kernel per rank, all ranks with the same seq; the sync primitives and the
// SyncArea of the low-latency kernels):
//  1. the leader block posts this rank's per-destination row counts and per-expert token
//     counts (both bound by UpdateHandle, kernels/routing.cuh) into every peer's inbox and
//     waits for every peer's; every rank then knows the whole R x R row matrix, so all ranks
//     agree on a capacity overflow. It computes its packed base row on every destination,
//     its base in each expert's gather list there, and its own receive metadata;
//  2. at most sm_budget blocks copy rows: a warp per (token, row part) loads the part once,
//     16-byte vectors with kHtVectorsInFlight loads in flight per lane, and stores it to every
//     destination of the token, with the row's metadata, its gather-list entries and the
//     combine slot (fp8 quantized by the kernel: a warp per (token, four 128-channel blocks)
//     quantizes them once and stores them to every destination of the token);
//  3. every block fences (at system scope when the group spans GPUs), the last one sets done on
//     every destination and waits for every source's done: when the kernel ends this rank's
//     receive buffers are complete.
// Inbox entries per source (stride HtInboxExperts(E, R) + 2): [0, E) tokens per expert,
// [E, E + R) rows per destination rank, then n and the handle slot (as the low-latency
// layout puts them after its E entries, so combine's in-place path reads the slot alike).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/dispatch.cuh"

namespace epd::kernels {

// The `experts` argument of SyncInboxStride / SyncAreaBytes for a high-throughput group.
constexpr int HtInboxExperts(int experts, int ranks) { return experts + ranks; }

// Bytes a lane keeps in flight: kHtVectorsInFlight 16-byte loads before their stores.
constexpr int kHtVectorsInFlight = 8;
// A warp copies a row in parts of at most this many vectors (32 lanes x kHtVectorsInFlight),
// all parts of a row equally wide.
constexpr int kHtVectorsPerPart = 32 * kHtVectorsInFlight;

// The shared inputs' row_bytes is a received row's (H bytes with the fp8 payloads). What each
// row carries (DispatchPayload, kernels/dispatch.cuh): kPayloadCopy moves x's rows;
// kPayloadQuantize quantizes bf16 x to e4m3 + a scale per 128 channels once per token and
// stores it to every destination of the token; kPayloadPrequantized copies e4m3 x and
// x_scales. fp8 rows land in the destination's recv_x (e4m3) and recv_scales.
struct HtDispatchParams : DispatchInputs {
  int recv_capacity = 0;                // M rows per rank
  const int32_t* dest_row = nullptr;     // [T, R]
  const int32_t* dest_counts = nullptr;  // [R]
  // This rank's own exported metadata.
  int32_t* recv_rank_counts = nullptr;   // [R]
  int32_t* recv_rank_offsets = nullptr;  // [R]
  int32_t* recv_counts = nullptr;        // [L]
  int32_t* recv_offsets = nullptr;       // [L + 1]
};

// blocks: the SM budget (>= 1; the kernel strides over its work). 512 threads each.
cudaError_t LaunchHtDispatch(const HtDispatchParams& params, int blocks, cudaStream_t stream);

}  // namespace epd::kernels
