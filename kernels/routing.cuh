// Routing bind for UpdateHandle: validates expert ids on the device and normalises a
// frontend's top-k routing into the handle's private buffers; any n <= T, no allocation, no
// device-wide synchronisation. Small n runs as one block; from RoutingChunkedFrom(...) on
// (kernels/routing_scratch.h: 2048 tokens, 1024 with high-throughput, never below
// kRoutingChunkedMinTokens), when the handle's scratch holds ComputeRoutingScratch(n, ...),
// it runs as three grid-wide launches on the stream (count per chunk, scan, write) with
// bit-identical results.
//
// On a bad id (outside [-1, E)) it writes a kDeviceErrorBadExpertId record naming the first
// bad (t, k, value) in row-major order and binds zero tokens, so a later dispatch sends
// nothing instead of reading stale rows.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/device_error.cuh"
#include "kernels/sync_area.cuh"

namespace epd::kernels {

struct RoutingParams {
  const void* topk_idx = nullptr;  // [n, K] int32 or int64
  int idx_is_int64 = 0;
  const float* topk_weights = nullptr;  // [n, K] or null (weights 1.0)
  int num_tokens = 0;
  int top_k = 0;
  int experts = 0;
  int local_experts = 0;
  int max_tokens = 0;
  int group_rank = 0;
  int rank_major = 0;
  int32_t* topk_out = nullptr;       // [T, K] int32 ids
  float* weights_out = nullptr;      // [T, K] f32
  int32_t* expert_counts = nullptr;  // [E] selections per expert
  int32_t* local_rank =
      nullptr;              // [T, K] index of (t, k) among this rank's selections of its expert
  int32_t* slot = nullptr;  // [T, K] rank-major combine row (expert-major: set by dispatch)
  int32_t* bound_tokens = nullptr;  // [1] n, read by dispatch and combine
  DeviceError* error = nullptr;
  // High-throughput (kernels/ht_dispatch.cuh): expert_counts and local_rank count a token once
  // per expert (its first k selecting it; later repeats get local_rank -1), and the packed
  // row plan per destination rank is bound here, so dispatch only adds the peers' bases.
  int high_throughput = 0;
  int world_size = 0;
  int32_t* dest_row = nullptr;     // [T, R] token t's index among this rank's rows to d, or -1
  int32_t* dest_counts = nullptr;  // [R] rows this rank sends to each rank
  // Daemon-owned scratch of the chunked bind (RoutingScratchBytes(T, E, R, high_throughput)
  // bytes, 4-byte aligned); null or too small for n: the single-block bind runs.
  void* scratch = nullptr;
  size_t scratch_bytes = 0;
  // From how many tokens to bind chunked; 0: the tuned default (kernels/routing_scratch.h).
  // Tests lower it to kRoutingChunkedMinTokens to cover the chunked path at small sizes.
  int chunked_from = 0;
  // 1: launched behind the daemon's fence-wait kernels (kernels/internal/overlapped_launch.cuh).
  int overlap_launch = 0;
  DeviceFenceSignal signal;  // the op's fence signal (sync_area.cuh)
};

cudaError_t LaunchBindRouting(const RoutingParams& params, cudaStream_t stream);

}  // namespace epd::kernels
