// Grid sizes and token types of the collective kernels, shared by every launcher (the daemon's
// streams and frontend-launched ops), so both paths run the same geometry.
#pragma once

#include <algorithm>
#include <cstdint>

#include "common/dtype.h"
#include "common/limits.h"
#include "kernels/combine.cuh"
#include "kernels/dispatch.cuh"

namespace epd::kernels {

// Combine's token type of a group dtype (the core validated it is a token dtype).
inline int TokenTypeOf(DType dtype) {
  switch (dtype) {
    case DType::kBf16:
      return kTokenBf16;
    case DType::kFp16:
      return kTokenFp16;
    default:
      return kTokenFp32;
  }
}

// A warp per work item, at most `max_blocks` (the kernels stride over the rest).
inline int GridBlocksFor(int64_t items, int max_blocks) {
  const int64_t blocks = (items + kCollectiveWarpsPerBlock - 1) / kCollectiveWarpsPerBlock;
  return static_cast<int>(std::clamp<int64_t>(blocks, 1, std::max(1, max_blocks)));
}

inline int DispatchBlocks(const DispatchParams& p, int num_tokens, int max_blocks) {
  if (p.payload == kPayloadQuantize) {  // a warp per (token, step), writing all its rows
    const int64_t tokens = p.rank_major ? p.max_tokens : num_tokens;
    return GridBlocksFor(tokens * DispatchQuantizeSteps(p), max_blocks);
  }
  const int64_t rows = p.rank_major ? int64_t{p.world_size} * p.max_tokens
                                    : int64_t{num_tokens} * p.top_k;
  return GridBlocksFor(rows * DispatchRowParts(p), max_blocks);
}

inline int CombineBlocks(int64_t row_bytes, int num_tokens, int max_blocks,
                         bool wide_items = false) {
  const int64_t vectors = row_bytes / 16;
  const int64_t item = wide_items ? kCombineWideVectorsPerItem : kCombineVectorsPerItem;
  const int64_t chunks = (vectors + item - 1) / item;
  return GridBlocksFor(int64_t{num_tokens} * chunks, max_blocks);
}

}  // namespace epd::kernels
