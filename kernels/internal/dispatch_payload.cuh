// The row payload of dispatch: what one warp writes for one part of one received row. The
// dispatch kernel decides where rows go; these decide what a row holds:
//  - kPayloadCopy: the token's bytes (16-byte vectors, kDispatchVectorsPerPart per part);
//  - kPayloadQuantize: the bf16 token quantized to e4m3 + its block scales (fp8_quant.cuh),
//    ONCE per token: a warp quantizes four blocks of it (Load/QuantizeTokenStep), stores them to
//    every row the token goes to (StoreTokenStep); the dispatch kernel loops over the rows;
//  - kPayloadPrequantized: the frontend's e4m3 bytes and scales, copied.
// Absent rank-major rows are zero in recv_x and (fp8) in recv_scales.
#pragma once

#include <cstdint>

#include "kernels/dispatch.cuh"
#include "kernels/internal/device_sync.cuh"
#include "kernels/internal/fp8_quant.cuh"

namespace epd::kernels::detail {

// Where part `part` of received row `row` of `peer` goes (fp8 payloads): its 128-channel
// blocks [first, first + count), the row's e4m3 bytes and the row's scales.
struct Fp8Part {
  int first = 0, count = 0, scale_bytes = 4;
  uint8_t* row = nullptr;
  char* scales = nullptr;
};
__device__ __forceinline__ Fp8Part DestinationPart(const DispatchParams& p,
                                                   const PeerBuffers& peer, int64_t row,
                                                   int part) {
  Fp8Part d;
  const int blocks = p.hidden / kFp8BlockChannels;
  d.first = part * kDispatchBlocksPerPart;
  d.count = min(kDispatchBlocksPerPart, blocks - d.first);
  d.scale_bytes = p.ue8m0_scales ? 1 : 4;
  d.row = static_cast<uint8_t*>(peer.recv_x) + row * p.hidden;
  d.scales = static_cast<char*>(peer.recv_scales) + row * blocks * d.scale_bytes;
  return d;
}

// Writes part `part` of token t of this rank as row `row` of `peer` (kPayloadCopy,
// kPayloadPrequantized). Whole warp.
// kPayload: the launch's p.payload, a template parameter so each payload's kernel gets its
// own registers.
template <int kPayload>
__device__ __forceinline__ void WritePayloadPart(const DispatchParams& p, const PeerBuffers& peer,
                                                 int64_t row, int t, int part, int lane) {
  if constexpr (kPayload == kPayloadCopy) {
    const int vectors = static_cast<int>(p.row_bytes / 16);
    const int first = part * kDispatchVectorsPerPart;
    WarpCopyRow(
        reinterpret_cast<int4*>(static_cast<char*>(peer.recv_x) + row * p.row_bytes) + first,
        reinterpret_cast<const int4*>(static_cast<const char*>(p.x) + t * p.row_bytes) + first,
        min(kDispatchVectorsPerPart, vectors - first), lane);
    return;
  }
  // kPayloadPrequantized (kPayloadQuantize stores whole tokens: StoreTokenStep)
  const Fp8Part d = DestinationPart(p, peer, row, part);
  const int first = d.first, count = d.count, scale_bytes = d.scale_bytes;
  const uint8_t* src_row = static_cast<const uint8_t*>(p.x) + static_cast<int64_t>(t) * p.hidden;
  WarpCopyRow(reinterpret_cast<int4*>(d.row + first * kFp8BlockChannels),
              reinterpret_cast<const int4*>(src_row + first * kFp8BlockChannels),
              count * (kFp8BlockChannels / 16), lane);
  const char* src_scales = static_cast<const char*>(p.x_scales) +
                           static_cast<int64_t>(t) * (p.hidden / kFp8BlockChannels) * scale_bytes;
  if (lane < count) {
    const int b = first + lane;
    if (scale_bytes == 4) {
      // bit copy: a frontend may pass any 32-bit pattern
      reinterpret_cast<uint32_t*>(d.scales)[b] = reinterpret_cast<const uint32_t*>(src_scales)[b];
    } else {
      d.scales[b] = src_scales[b];
    }
  }
}

// Step `step` of token t (kPayloadQuantize): blocks 4 * step .. 4 * step + 3, eight lanes each
// (lane / 8 picks the block, 16 channels per lane). LoadTokenStep issues the lane's loads;
// QuantizeTokenStep turns them into the lane's piece (whole warp: the amax reduction
// shuffles). Params: the low-latency or the high-throughput dispatch's (x, hidden,
// ue8m0_scales), so both quantize alike.
constexpr int kStepChannelsPerLane = 16;
constexpr int kStepLanesPerBlock = kFp8BlockChannels / kStepChannelsPerLane;
static_assert(kStepLanesPerBlock * kDispatchBlocksPerStep == 32, "a warp per step");
using TokenStepRaw = RawPiece<kStepChannelsPerLane>;
using TokenStepPiece = QuantizedPiece<kStepChannelsPerLane>;

__device__ __forceinline__ int StepBlock(int step, int lane) {
  return kDispatchBlocksPerStep * step + lane / kStepLanesPerBlock;
}
template <typename Params>
__device__ __forceinline__ bool TokenStepValid(const Params& p, int step, int lane) {
  return StepBlock(step, lane) < p.hidden / kFp8BlockChannels;
}
template <typename Params>
__device__ __forceinline__ TokenStepRaw LoadTokenStep(const Params& p, int t, int step, int lane) {
  const uint16_t* src_row = static_cast<const uint16_t*>(p.x) + static_cast<int64_t>(t) * p.hidden;
  return LoadPiece<kStepChannelsPerLane>(src_row + StepBlock(step, lane) * kFp8BlockChannels,
                                         TokenStepValid(p, step, lane), lane % kStepLanesPerBlock);
}
template <typename Params>
__device__ __forceinline__ TokenStepPiece QuantizeTokenStep(const Params& p,
                                                            const TokenStepRaw& raw, int step,
                                                            int lane) {
  return QuantizeLoadedPiece(raw, p.ue8m0_scales != 0, TokenStepValid(p, step, lane));
}

// Stores a step's pieces as the same blocks of received row `row` of `peer`; a zero piece
// (TokenStepPiece{}) zeroes them (an absent rank-major row). Whole warp.
template <typename Params>
__device__ __forceinline__ void StoreTokenStep(const Params& p, const PeerBuffers& peer,
                                               int64_t row, int step, const TokenStepPiece& piece,
                                               int lane) {
  const int blocks = p.hidden / kFp8BlockChannels;
  const int b = StepBlock(step, lane);
  if (b >= blocks) return;
  const int scale_bytes = p.ue8m0_scales ? 1 : 4;
  uint8_t* dst_row = static_cast<uint8_t*>(peer.recv_x) + row * p.hidden;
  char* dst_scales = static_cast<char*>(peer.recv_scales) + row * blocks * scale_bytes;
  StorePiece(piece, dst_row + b * kFp8BlockChannels, dst_scales + b * scale_bytes,
             p.ue8m0_scales != 0, lane % kStepLanesPerBlock);
}

// Zeroes part `part` of row `row` of `peer` (an absent rank-major row). Whole warp.
template <int kPayload>
__device__ __forceinline__ void ZeroPayloadPart(const DispatchParams& p, const PeerBuffers& peer,
                                                int64_t row, int part, int lane) {
  if constexpr (kPayload == kPayloadCopy) {
    const int vectors = static_cast<int>(p.row_bytes / 16);
    const int first = part * kDispatchVectorsPerPart;
    WarpZeroRow(
        reinterpret_cast<int4*>(static_cast<char*>(peer.recv_x) + row * p.row_bytes) + first,
        min(kDispatchVectorsPerPart, vectors - first), lane);
    return;
  }
  const Fp8Part d = DestinationPart(p, peer, row, part);
  WarpZeroRow(reinterpret_cast<int4*>(d.row + d.first * kFp8BlockChannels),
              d.count * (kFp8BlockChannels / 16), lane);
  for (int i = lane; i < d.count * d.scale_bytes; i += 32) {
    d.scales[d.first * d.scale_bytes + i] = 0;
  }
}

}  // namespace epd::kernels::detail
