// Low-latency intra-node combine: each rank pulls, for each of its tokens, the rows its
// top-k selections produced on the destination ranks (peer pointers into their expert
// outputs) and reduces them in fp32 in k order, exactly as reference::Combine:
//   acc = 0; for k ascending with slot >= 0: acc = acc + w * z (two roundings, no FMA);
//   out = round-to-nearest-even(acc) in the token dtype.
//
// A device-side barrier opens the op (every rank's expert output is final: its stream passed
// its own fence wait) and another closes it (no rank reuses its expert output or receive
// buffer while peers still read it). Each rank publishes its expert output's address with its
// opening flag (the per-op exchange); peers read it after the barrier. Every wait is bounded by
// timeout_ns and released by the group's abort word or a peer that gave up the op.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/collective_launch.cuh"

namespace epd::kernels {

enum TokenType : int { kTokenBf16 = 0, kTokenFp16 = 1, kTokenFp32 = 2 };

struct CombineParams : CollectiveLaunch {
  int top_k = 0;
  int local_experts = 0;
  int hidden = 0;
  int token_type = kTokenBf16;
  int rank_major = 0;     // weight 1 per destination rank (the frontend pre-reduced)
  int64_t recv_rows = 0;  // rows of every expert output; larger slots are ignored
  const int32_t* topk_idx = nullptr;
  const float* topk_weights = nullptr;
  const int32_t* slot = nullptr;
  const int32_t* bound_tokens = nullptr;
  void* out = nullptr;               // [n, H]
  const void* expert_out = nullptr;  // this rank's [recv_rows, H], valid on every GPU
  // 1: every rank's expert output is its handle's recv_x (in place), read through the peer
  // table by the slot each destination sent with its dispatch counts, not through the
  // address published in the SyncArea. Frontend-launched ops need it: a published address is
  // valid only in the process that published it.
  int expert_out_in_place = 0;
  int experts = 0;  // needed with expert_out_in_place (the inbox stride)
  // 1: wide work items (kCombineWideVectorsPerItem; high-throughput: one row per destination
  // rank per token, a few SMs), size the grid with the same item (CombineBlocks).
  int wide_items = 0;
};

// blocks: any number >= 1 (the kernel strides); 512 threads each.
cudaError_t LaunchCombine(const CombineParams& params, int blocks, cudaStream_t stream);

// Vectors of 16 bytes a warp reduces per work item (two per lane; wide: eight); the host
// sizes grids with them.
constexpr int kCombineVectorsPerItem = 64;
constexpr int kCombineWideVectorsPerItem = 256;

}  // namespace epd::kernels
