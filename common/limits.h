// The limits that the host side (group validation, backends) and the CUDA kernels both rely
// on, in one place. Kernels check their own launch constants against these with static_assert,
// so a change here that a kernel cannot honour fails the build instead of corrupting memory.
// Plain C++17 constexpr: included by host code and by nvcc.
#pragma once

namespace epd {

// --- group shape (GroupConfig::Validate): bounds that keep every size computation inside
// int32 row indices and sane memory ---
// GPUs of one node a cuda group spans (peer pointers, SyncArea flags); the cpu backend's host
// ranks are bounded by its own configuration instead.
inline constexpr int kMaxRanks = 8;
// Ranks of one group over every node it spans (the largest EP deployments run ~2048). NOTE:
// checked before a world_size is expanded into a rank list: 2^31 - 1 would be 8 GB and hang
// the control worker.
inline constexpr int kMaxWorldSize = 4096;
inline constexpr int kMaxExperts = 1 << 12;
inline constexpr int kMaxTopK = 32;
inline constexpr int kMaxHidden = 1 << 16;
inline constexpr int kMaxTokensPerRank = 1 << 16;
// hidden must be a multiple of this, so a token row of the narrowest token dtype (2 bytes) is
// a whole number of vectors.
inline constexpr int kHiddenMultiple = 8;

// --- device work decomposition ---
inline constexpr int kWarpSize = 32;
// Bytes one lane moves per load/store in dispatch and combine (an int4).
inline constexpr int kVectorBytes = 16;
// Threads of a dispatch / combine block and the warps that makes.
inline constexpr int kCollectiveThreads = 512;
inline constexpr int kCollectiveWarpsPerBlock = kCollectiveThreads / kWarpSize;
// Dispatch scans the per-expert counts in one block, each thread owning this many experts.
inline constexpr int kDispatchExpertsPerThread = 8;

// High-throughput copies run on a bounded number of SMs (GroupConfig.sm_budget) so the
// frontend's GEMMs keep the rest: the default and the largest budget a group may ask for.
inline constexpr int kDefaultHtSmBudget = 24;
inline constexpr int kMaxHtSmBudget = 1024;

static_assert(kHiddenMultiple * 2 % kVectorBytes == 0,
              "a row of kHiddenMultiple 16-bit elements must be whole vectors");
static_assert(kCollectiveThreads % kWarpSize == 0, "blocks are whole warps");
static_assert(kCollectiveThreads * kDispatchExpertsPerThread >= kMaxExperts,
              "dispatch's one-block expert scan must cover every expert");

}  // namespace epd
